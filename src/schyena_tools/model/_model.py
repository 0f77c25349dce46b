"""`SCHyena`: the user-facing model class, in the scvi-tools idiom."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  scvi-tools' view_anndata_setup uses rich.pretty without importing it
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainingPlan, TrainRunner
from scvi.utils import setup_anndata_dsp

from schyena_tools.module import SCHyenaModule

from ._finetune import FineTuneMixin
from ._query import QueryMixin

logger = logging.getLogger(__name__)

#: Cells per minibatch when the user gives none. Each cell is a sequence of every gene, so
#: minibatches are far smaller than the 128 scvi-tools uses for a VAE.
DEFAULT_BATCH_SIZE = 16


class SCHyena(FineTuneMixin, QueryMixin, BaseModelClass):
    """scHyena: a foundation model that reads every gene of a cell (Oh et al., 2023).

    Each gene of the model's ordered gene vocabulary is one token: a linear adaptor lifts its
    log-normalised expression to ``d_model`` channels, a learned gene embedding marks which gene it
    is, and bidirectional Hyena blocks (gated implicit long convolutions computed by FFT, in time
    ``O(L log L)`` in the number of genes ``L``) mix all genes in both directions. No highly
    variable gene selection, ranking or binning takes place.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`. Its ``var_names``, in order, become the
        model's gene vocabulary unless ``gene_vocabulary`` is given.
    d_model
        Channels per gene token; also the size of the cell embedding.
    n_layers
        Number of bidirectional Hyena blocks.
    order
        Hyena order: gates and long convolutions per block.
    mlp_ratio
        Width of each block's MLP as a multiple of ``d_model``.
    filter_hidden_dim
        Width of the MLP that parametrises the long filters.
    dropout
        Dropout inside the blocks.
    gradient_checkpointing
        Trade compute for memory when training at full length.
    target_sum
        Counts per cell after library-size normalisation, before ``log1p``.
    gene_vocabulary
        Ordered gene names of the model. Defaults to ``adata.var_names``. A model applied to data
        with another gene panel keeps its vocabulary: see :meth:`load_query_data`.

    Notes
    -----
    Where scHyena departs from a scvi-tools VAE: it is not generative, so there is no
    ``get_normalized_expression`` from a likelihood; the training objective is masked
    expression modelling, and a minibatch is a handful of cells because each one is a sequence
    of tens of thousands of tokens. ``batch_key`` is registered (for stratified use downstream)
    but the network does not condition on it: like the paper, batch effects are left to the
    pre-training data.

    Examples
    --------
    >>> import schyena_tools as st
    >>> adata = st.datasets.zeisel_brain()
    >>> st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    >>> model = st.SCHyena(adata)
    >>> model.train(max_epochs=5)
    >>> adata.obsm["X_schyena"] = model.get_latent_representation()
    """

    _module_cls = SCHyenaModule
    _training_plan_cls = TrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: AnnData | None = None,
        d_model: int = 64,
        n_layers: int = 2,
        order: int = 2,
        mlp_ratio: int = 2,
        filter_hidden_dim: int = 32,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        target_sum: float = 1e4,
        gene_vocabulary: Sequence[str] | None = None,
    ):
        super().__init__(adata)
        if adata is None:
            raise ValueError("SCHyena needs an AnnData registered with SCHyena.setup_anndata(adata).")
        self.gene_vocabulary = pd.Index(
            adata.var_names if gene_vocabulary is None else list(gene_vocabulary), dtype=str
        )
        self.module = self._module_cls(
            n_genes=len(self.gene_vocabulary),
            d_model=d_model,
            n_layers=n_layers,
            order=order,
            mlp_ratio=mlp_ratio,
            filter_hidden_dim=filter_hidden_dim,
            dropout=dropout,
            gradient_checkpointing=gradient_checkpointing,
            target_sum=target_sum,
            n_labels=self._n_classifier_labels(),
        )
        self.module.gene_index = self._gene_index_for(adata)
        self.phase_history_: dict[str, dict[str, pd.DataFrame]] = {}
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"SCHyena: {len(self.gene_vocabulary)} genes per cell as tokens, d_model={d_model}, "
            f"n_layers={n_layers}, order={order}, {n_params:,} parameters."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ registration
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        unlabeled_category: str = "Unknown",
        **kwargs,
    ):
        """Register an AnnData of raw counts with scHyena.

        Parameters
        ----------
        adata
            Cells x genes AnnData. Raw counts (integers), sparse or dense, in ``.X`` or ``layer``.
            Normalisation and ``log1p`` happen inside the model.
        layer
            Layer holding the raw counts; ``None`` uses ``.X``.
        labels_key
            Column of ``adata.obs`` with cell-type labels, for fine-tuning a classifier.
        batch_key
            Column of ``adata.obs`` with batch labels (registered, not used by the network).
        unlabeled_category
            Label value that marks unlabelled cells; they are left out of classification losses.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            # scvi-tools' labels-with-unlabelled field needs a real column; without labels the
            # plain categorical field registers a constant one.
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category)
            if labels_key is not None
            else CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ gene vocabulary
    def _gene_index_for(self, adata: AnnData) -> torch.Tensor | None:
        """Column of ``adata`` for each vocabulary gene (-1 if absent); None if identical."""
        if adata.n_vars == len(self.gene_vocabulary) and (adata.var_names == self.gene_vocabulary).all():
            return None
        positions = pd.Index(adata.var_names).get_indexer(self.gene_vocabulary)
        return torch.as_tensor(positions, dtype=torch.long)

    # ------------------------------------------------------------------ training
    def _train_phase(
        self,
        objective: str,
        max_epochs: int,
        batch_size: int | None,
        accelerator: str,
        devices: int | list[int] | str,
        train_size: float | None,
        validation_size: float | None,
        early_stopping: bool,
        plan_kwargs: dict | None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Run one training phase with scvi-tools' data splitter, training plan and Trainer."""
        self.module.objective = objective
        datamodule = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size or DEFAULT_BATCH_SIZE,
            **(datasplitter_kwargs or {}),
        )
        plan_kwargs = {"optimizer": "AdamW", "lr": 1e-3, "weight_decay": 1e-2, **(plan_kwargs or {})}
        training_plan = self._training_plan_cls(self.module, **plan_kwargs)
        trainer_kwargs.setdefault("early_stopping", early_stopping)
        if train_size is None or train_size < 1.0:
            # Report the validation loss every epoch (scvi-tools only does when early stopping).
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        runner = self._train_runner_cls(
            self,
            training_plan=training_plan,
            data_splitter=datamodule,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            **trainer_kwargs,
        )
        result = runner()
        self.phase_history_[objective] = dict(self.history_ or {})
        return result

    def train(
        self,
        max_epochs: int = 10,
        batch_size: int | None = None,
        mask_ratio: float = 0.15,
        zero_mask_ratio: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Pre-train by masked expression modelling.

        In every cell, a fraction ``mask_ratio`` of the non-zero values and a fraction
        ``zero_mask_ratio`` of the zeros are hidden (replaced by the learned mask token); the
        network predicts them from all the other genes, and the mean squared error on the
        log-normalised scale over the hidden entries is the loss (``model.history``:
        ``train_loss``, ``validation_loss``; per phase in ``model.phase_history_``).

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        batch_size
            Cells per minibatch (default 16: each cell is a sequence of every gene).
        mask_ratio
            Fraction of non-zero values hidden per cell.
        zero_mask_ratio
            Fraction of zero values hidden per cell; default ``mask_ratio / 10``.
        accelerator, devices
            Where to train, as in Lightning (``"cpu"``, ``"gpu"``, ``"auto"``).
        train_size, validation_size
            Split of the cells, as in scvi-tools' ``DataSplitter``.
        early_stopping
            Stop when the validation loss stops improving (see :class:`scvi.train.Trainer`).
        plan_kwargs
            Passed to :class:`scvi.train.TrainingPlan` (e.g. ``{"lr": 3e-4}``). Default optimiser:
            AdamW, learning rate 1e-3, weight decay 1e-2.
        datasplitter_kwargs
            Passed to :class:`scvi.dataloaders.DataSplitter` (e.g. ``{"num_workers": 2}``).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).
        """
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be between 0 and 1 (exclusive), got {mask_ratio}")
        zero_mask_ratio = mask_ratio / 10 if zero_mask_ratio is None else zero_mask_ratio
        if not 0.0 <= zero_mask_ratio < 1.0:
            raise ValueError(f"zero_mask_ratio must be in [0, 1), got {zero_mask_ratio}")
        self.module.mask_ratio = mask_ratio
        self.module.zero_mask_ratio = zero_mask_ratio
        return self._train_phase(
            "pretrain",
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
            datasplitter_kwargs=datasplitter_kwargs,
            **trainer_kwargs,
        )

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def _run_inference(self, adata, indices, batch_size, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Encode cells in minibatches (no masking, no gradient) and collect ``outputs``."""
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size or DEFAULT_BATCH_SIZE
        )
        self.module.eval()
        collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for tensors in loader:
            result = self.module.inference(tensors[REGISTRY_KEYS.X_KEY])
            for name in outputs:
                collected[name].append(result[name].float().cpu().numpy())
        return {name: np.concatenate(parts, axis=0) for name, parts in collected.items()}

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Cell embeddings: the mean of the final gene-token states over measured genes.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; defaults to it.
        indices
            Cells to embed; defaults to all.
        batch_size
            Cells per minibatch (default 16).

        Returns
        -------
        ``float32`` array of shape ``(cells, d_model)``. Store it as
        ``adata.obsm["X_schyena"]`` and use ``sc.pp.neighbors(adata, use_rep="X_schyena")``.
        """
        self._check_if_trained(warn=True)
        result = self._run_inference(adata, indices, batch_size, ["cell_embedding"])
        return result["cell_embedding"].astype(np.float32)

