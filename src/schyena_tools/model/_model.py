"""`SCHyena`: the user-facing model class, in the scvi-tools idiom.

The face only: construction, ``setup_anndata``, the checks on every use, the one inference
loop and the cell embedding. Training (:mod:`._training`), classification
(:mod:`._classification`), doublet detection (:mod:`._doublets`), imputation
(:mod:`._imputation`), saving and loading (:mod:`._save_load`), sharing through scvi.hub
(:mod:`._hub`) and other gene panels (:mod:`._query`) are mixins in their own files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

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
from scvi.train import TrainRunner
from scvi.utils import setup_anndata_dsp

from schyena_tools.module import SCHyenaModule
from schyena_tools.validation import check_anndata, check_batch_size, check_number

from ._classification import ClassificationMixin
from ._corpus import CorpusMixin
from ._doublets import DoubletMixin
from ._hub import HubMixin
from ._imputation import ImputationMixin
from ._progress import progress
from ._query import QueryMixin
from ._results import check_keys_free, fill_rows, store
from ._save_load import SAVE_FORMAT_VERSION, SaveLoadMixin, package_version
from ._training import DEFAULT_BATCH_SIZE, TrainingMixin
from ._training_plan import SCHyenaTrainingPlan
from ._vocabulary import extra_gene_columns, gene_index_for, gene_mismatch

logger = logging.getLogger(__name__)


class SCHyena(
    CorpusMixin,
    ClassificationMixin,
    DoubletMixin,
    ImputationMixin,
    TrainingMixin,
    SaveLoadMixin,
    HubMixin,
    QueryMixin,
    BaseModelClass,
):
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
    _training_plan_cls = SCHyenaTrainingPlan
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
        for name, value in (
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("order", order),
            ("mlp_ratio", mlp_ratio),
            ("filter_hidden_dim", filter_hidden_dim),
        ):
            check_number(value, name, integer=True, minimum=1)
        check_number(dropout, "dropout", minimum=0, maximum=1, exclusive_maximum=True)
        check_number(target_sum, "target_sum", minimum=0, exclusive_minimum=True)
        super().__init__(adata)
        if adata is None:
            raise ValueError("SCHyena needs an AnnData registered with SCHyena.setup_anndata(adata).")
        self.gene_vocabulary = pd.Index(
            adata.var_names if gene_vocabulary is None else list(gene_vocabulary), dtype=str
        )
        if len(self.gene_vocabulary) < 2:
            raise ValueError(
                f"scHyena reads a cell as a sequence of genes and needs at least 2; this model's "
                f"vocabulary has {len(self.gene_vocabulary)}. Register the full gene panel (all genes, "
                f"not a subset) or pass gene_vocabulary=."
            )
        gene_index = gene_index_for(self.gene_vocabulary, adata.var_names)
        extra_genes = extra_gene_columns(gene_index, adata.n_vars)
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
            gene_index=None if gene_index is None else torch.from_numpy(gene_index),
            extra_gene_index=None if extra_genes is None else torch.from_numpy(extra_genes),
        )
        self.phase_history_: dict[str, dict[str, pd.DataFrame]] = {}
        # Saved with the model (attributes ending in "_" are), checked by load().
        self.save_format_version_ = SAVE_FORMAT_VERSION
        self.schyena_tools_version_ = package_version()
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"SCHyena: {len(self.gene_vocabulary):,} genes per cell as tokens\n"
            f"d_model={d_model}, n_layers={n_layers}, order={order}, {n_params:,} parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    def __repr__(self) -> str:
        """Short lines of plain text (scvi-tools' rich print wraps them mid-sentence)."""
        phases = ", ".join(self.phase_history_) if self.phase_history_ else None
        if phases:
            status = f"trained ({phases})"
        else:
            status = "trained" if self.is_trained_ else "not trained"
        return f"{self._model_summary_string}\nTraining status: {status}"

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

        The input is checked first, and bad input is an error before anything is registered:
        an empty AnnData; duplicate gene names (genes are matched to the vocabulary by name);
        a ``layer``, ``labels_key`` or ``batch_key`` that does not exist; missing (NaN) labels;
        NaN or infinite values; negative values (scaled data); library-size normalised or
        log-transformed values (recognised because, in each cell, the values, after ``expm1``
        for logged data, are multiples of one scale factor). See
        :func:`schyena_tools.validation.check_anndata`.

        Accepted, with a :class:`~schyena_tools.validation.CountsWarning`: non-integer, non-negative
        values that are not normalised counts, as written by pseudo-alignment tools (kallisto,
        salmon, alevin-fry EM estimates) -- they are legitimate counts, used as they are; and
        cells with no counts (kept; their embedding carries no information).

        Accepted silently: sparse or dense matrices of any float or integer dtype. A dense
        ``float64`` matrix is not copied: minibatches are converted to ``float32`` as they are
        read, so it costs no memory beyond the matrix itself.

        The checks are cheap on large data: sparse matrices are checked on their stored values in
        chunks, without a dense copy (about 1 s per 10^8 stored values on one core); a
        file-backed matrix (``read_h5ad(path, backed="r")``) is checked on 1,000 evenly spaced
        cells only, so bad values elsewhere in it can go unseen.

        What registration writes into ``adata`` (the scvi-tools registration the user asks for):
        ``adata.obs["_scvi_batch"]`` and ``adata.obs["_scvi_labels"]`` (integer codes) and
        ``adata.uns["_scvi_uuid"]``, ``adata.uns["_scvi_manager_uuid"]``. ``.X``, layers, ``var``
        and the existing ``obs`` columns are left as they are (a dense matrix in Fortran order is
        rewritten in C order by scvi-tools, same values). A view (``adata[cells]`` without
        ``.copy()``) is an error naming the fix: registration cannot write into it.

        Parameters
        ----------
        adata
            Cells x genes AnnData. Raw counts, sparse or dense, in ``.X`` or ``layer``.
            Normalisation and ``log1p`` happen inside the model.
        layer
            Layer holding the raw counts; ``None`` uses ``.X``.
        labels_key
            Column of ``adata.obs`` with cell-type labels, for fine-tuning a classifier.
        batch_key
            Column of ``adata.obs`` with batch labels (registered, not used by the network).
        unlabeled_category
            Label value that marks unlabelled cells; they are left out of classification losses.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields` (scvi-tools uses it to
            replay a saved registration).

        """
        if isinstance(adata, AnnData) and adata.is_view:
            raise ValueError(
                "adata is a view (a subset such as adata[cells] without .copy()): registration writes "
                "into the AnnData, which a view cannot hold. Pass a copy: adata = adata[cells].copy()."
            )
        check_anndata(adata, layer=layer, labels_key=labels_key, batch_key=batch_key)
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            # check_anndata above replaces scvi-tools' count check (20 sampled values, and a
            # warning that does not say what to do).
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
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

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """Check ``adata`` (default: the registered one) before the model uses it.

        The counts are checked again on every use, because they may have been changed in place
        after registration (``sc.pp.normalize_total(adata)`` would otherwise be embedded as if it
        were counts), and so are the genes: they must be the genes, in the order, that the model
        was set up with (a different panel goes through :meth:`load_query_data`).
        """
        if adata is None:
            self._refuse_standin()
        target = self.adata if adata is None else adata
        setup_args = self.adata_manager.registry.get("setup_args", {})
        check_anndata(target, layer=setup_args.get("layer"))
        self._check_genes_unchanged(target)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def _check_genes_unchanged(self, adata: AnnData) -> None:
        """``adata`` has the registered genes in the registered order (or raise, saying so)."""
        registered = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY)["column_names"]
        problem = gene_mismatch(registered, adata.var_names)
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------ inference
    def _inference_batches(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        batch_size: int | None,
        progress_bar: str | None = None,
        **inference_kwargs,
    ) -> Iterator[tuple[torch.Tensor, dict]]:
        """The one inference loop: ``(counts, module.inference(counts, ...))`` per minibatch.

        ``adata`` is the already validated AnnData (each public call validates once). No random
        masking, no gradient; the module is in eval mode while the loop runs and gets its
        earlier mode back afterwards, so a later ``train*`` call trains with dropout on.
        ``progress_bar``: the description of a bar over the minibatches; ``None``: no bar.
        """
        check_batch_size(batch_size)
        loader = self._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size or DEFAULT_BATCH_SIZE
        )
        batches = (tensors[REGISTRY_KEYS.X_KEY] for tensors in loader)
        yield from self._inference_on_counts(batches, progress_bar, len(loader), **inference_kwargs)

    def _inference_on_counts(
        self,
        batches: Iterator[torch.Tensor],
        progress_bar: str | None = None,
        total: int | None = None,
        **inference_kwargs,
    ) -> Iterator[tuple[torch.Tensor, dict]]:
        """:meth:`_inference_batches` on minibatches of counts given as tensors.

        ``batches`` yields ``(cells, registered genes)`` raw counts (e.g. artificial doublets
        that no AnnData holds); ``total``: their number, for the progress bar.
        """
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                for counts in progress(
                    batches, progress_bar or "", show=progress_bar is not None, total=total
                ):
                    yield counts, self.module.inference(counts, **inference_kwargs)
        finally:
            self.module.train(was_training)

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress_bar: bool = True,
        key_added: str | None = None,
        overwrite: bool = False,
    ) -> np.ndarray:
        """Cell embeddings: the expression-weighted mean of the final gene-token states.

        Each measured gene's final state is weighted by its log-normalised expression (genes
        that read zero or were not measured get weight zero; a cell with no counts falls back to
        the plain mean over measured genes); see :class:`~schyena_tools.nn.SCHyenaEncoder`.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; defaults to it.
        indices
            Cells to embed; defaults to all.
        batch_size
            Cells per minibatch (default 16).
        progress_bar
            Show a progress bar over the minibatches.
        key_added
            Also write the embedding into ``adata.obsm[key_added]`` (e.g. ``"X_schyena"``), as
            scanpy's tools do; checked before any work: the key must not exist (unless
            ``overwrite``) and ``indices`` must be ``None``.
        overwrite
            Replace an existing ``adata.obsm[key_added]``.

        Returns
        -------
        ``float32`` array of shape ``(cells, d_model)``. Store it as
        ``adata.obsm["X_schyena"]`` (or pass ``key_added="X_schyena"``) and use
        ``sc.pp.neighbors(adata, use_rep="X_schyena")``.

        """
        self._check_if_trained(warn=True)
        destination = self.adata if adata is None else adata
        if key_added is not None:
            check_keys_free(destination, "obsm", [key_added], overwrite, indices)
        target = self._validate_anndata(adata)
        chunks = (
            out["cell_embedding"].float().cpu().numpy()
            for _, out in self._inference_batches(
                target, indices, batch_size, progress_bar="Embedding" if progress_bar else None
            )
        )
        n_cells = target.n_obs if indices is None else len(indices)
        embedding = fill_rows(chunks, n_cells, self.module.embedding_dim)
        if key_added is not None:
            store(destination, "obsm", key_added, embedding)
        return embedding
