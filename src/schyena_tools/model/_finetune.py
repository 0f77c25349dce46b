"""Fine-tuning scHyena: cell-type classification and imputation (mixin of :class:`SCHyena`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from schyena_tools.data import check_batch_size

logger = logging.getLogger(__name__)

#: Cells per chunk in :meth:`FineTuneMixin.get_imputed_expression` and :meth:`FineTuneMixin.predict`
#: when the user gives none; memory is ``O(chunk x genes x d_model)`` for the encoder plus
#: ``O(cells x genes)`` for the returned matrix.
DEFAULT_INFERENCE_BATCH_SIZE = 16


class FineTuneMixin:
    """Classification and imputation fine-tuning for :class:`~schyena_tools.SCHyena`.

    Both reuse the generic training phase of the model (scvi-tools ``DataSplitter`` +
    ``TrainingPlan`` + ``TrainRunner``) with another ``objective`` of the module: ``"classify"``
    (cross-entropy of a head on the cell embedding) or ``"impute"`` (dropout recovery).
    """

    # ------------------------------------------------------------------ labels
    def _labels_setup(self) -> tuple[str | None, str]:
        """``(labels_key, unlabeled_category)`` registered by ``setup_anndata``."""
        args = self.adata_manager.registry.get("setup_args", {})
        return args.get("labels_key"), args.get("unlabeled_category", "Unknown")

    def _label_classes(self) -> list[str]:
        """Cell-type classes of the classifier, in head order; empty without ``labels_key``.

        scvi-tools' labels-with-unlabelled field puts the unlabeled category last; the head
        predicts every other category.
        """
        labels_key, unlabeled = self._labels_setup()
        if labels_key is None:
            return []
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping
        return [str(c) for c in mapping if str(c) != str(unlabeled)]

    def _n_classifier_labels(self) -> int:
        """Size of the classification head (0 when no ``labels_key`` was registered)."""
        return len(self._label_classes())

    def _check_classifier_labels(self) -> np.ndarray:
        """Indices of labelled cells; clear errors when classification cannot be trained."""
        labels_key, unlabeled = self._labels_setup()
        if labels_key is None:
            raise ValueError(
                "train_classifier needs cell-type labels: register them with "
                "SCHyena.setup_anndata(adata, labels_key='<obs column>') before creating the model."
            )
        if self.module.classifier is None:
            raise ValueError(
                f"adata.obs[{labels_key!r}] holds no category other than the unlabeled category "
                f"{unlabeled!r}; label at least two cell types to train a classifier."
            )
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
        codes = np.asarray(codes).reshape(-1)
        labelled = np.flatnonzero(codes < self.module.n_labels)
        if labelled.size == 0:
            raise ValueError(
                f"every cell of adata.obs[{labels_key!r}] is the unlabeled category {unlabeled!r}; "
                "label at least two cell types to train a classifier."
            )
        present = np.unique(codes[labelled])
        if present.size < 2:
            raise ValueError(
                f"adata.obs[{labels_key!r}] has a single labelled class "
                f"({self._label_classes()[int(present[0])]!r}); a classifier needs at least two."
            )
        return labelled

    # ------------------------------------------------------------------ training
    def _fine_tune_phase(self, objective: str, **phase_kwargs):
        """Run ``_train_phase`` and record this phase's own metrics.

        scvi-tools' runner only extends the history keys that existed before, so the metrics a
        later phase introduces (``accuracy_train``, ``dropout_mse_train``...) would be lost; they
        are added here, and ``phase_history_[objective]`` holds this phase alone.
        """
        from scvi.train._trainrunner import _safe_load_logger_history

        result = self._train_phase(objective, **phase_kwargs)
        phase = _safe_load_logger_history(self.trainer) or {}
        history = dict(self.history_ or {})
        for key, frame in phase.items():
            history.setdefault(key, frame)
        self.history_ = history
        self.phase_history_[objective] = phase
        return result

    def train_classifier(
        self,
        max_epochs: int = 10,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        freeze_encoder: bool = False,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Fine-tune for cell-type classification on the registered ``labels_key``.

        A head (LayerNorm, dropout 0.1, linear) on the cell embedding is trained with
        cross-entropy together with the encoder (or alone, ``freeze_encoder=True``). Cells whose
        label is the ``unlabeled_category`` of :meth:`setup_anndata` are left out: they are
        neither trained on nor validated on. ``model.history`` then holds ``train_loss``,
        ``accuracy_train``, ``validation_loss`` and ``accuracy_validation`` per epoch (this phase
        alone also in ``model.phase_history_["classify"]``).

        Parameters
        ----------
        max_epochs
            Passes over the labelled training cells. With a few hundred labelled cells, use
            about 20: on 145 La Manno cells, 5 epochs left the classifier predicting one class
            and 20 reached a held-out macro-F1 of 0.66 (see the downstream benchmark page;
            measured with the earlier optimiser setting ``eps=0.01``, under which the gene-wise
            weights moved slowly).
        batch_size
            Cells per minibatch (default 16).
        lr, weight_decay
            AdamW learning rate and weight decay. Larger learning rates (3e-3 and up) made the
            classifier collapse to one class on small data sets.
        freeze_encoder
            Train the head only; the encoder (pre-trained weights) stays fixed. Cheaper in
            memory, usually less accurate.
        accelerator, devices
            Where to train, as in Lightning.
        train_size
            Fraction of the labelled cells trained on; the rest (stratified at random by
            scvi-tools' seed) is the validation set. ``1.0`` trains on all of them.
        early_stopping
            Stop when ``validation_loss`` stops improving.
        plan_kwargs
            Extra arguments of :class:`scvi.train.TrainingPlan`.
        datasplitter_kwargs
            Extra arguments of :class:`scvi.dataloaders.DataSplitter`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.

        """
        labelled = self._check_classifier_labels()
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size must be in (0, 1], got {train_size}")
        # Explicit split of the labelled cells; unlabelled ones go to the (unused) test set so
        # that no step is spent on them.
        from scvi import settings

        rng = np.random.default_rng(settings.seed)
        shuffled = rng.permutation(labelled)
        n_train = len(shuffled) if train_size >= 1.0 else max(1, int(round(train_size * len(shuffled))))
        train_idx, val_idx = np.sort(shuffled[:n_train]), np.sort(shuffled[n_train:])
        unlabelled = np.setdiff1d(np.arange(self.adata.n_obs), labelled)
        splitter_kwargs = {
            "external_indexing": [train_idx, val_idx, unlabelled],
            **(datasplitter_kwargs or {}),
        }

        frozen = []
        if freeze_encoder:
            for parameter in self.module.encoder.parameters():
                if parameter.requires_grad:
                    parameter.requires_grad_(False)
                    frozen.append(parameter)
        try:
            result = self._fine_tune_phase(
                "classify",
                max_epochs=max_epochs,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                train_size=1.0 if val_idx.size == 0 else train_size,
                validation_size=None,
                early_stopping=early_stopping,
                plan_kwargs={"lr": lr, "weight_decay": weight_decay, **(plan_kwargs or {})},
                datasplitter_kwargs=splitter_kwargs,
                **trainer_kwargs,
            )
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        self.is_classifier_trained_ = True
        return result

    def train_imputer(
        self,
        max_epochs: int = 10,
        batch_size: int | None = None,
        dropout_ratio: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = 0.9,
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Fine-tune for dropout recovery (imputation).

        Each step sets a random fraction ``dropout_ratio`` of every cell's non-zero counts to
        zero (a simulated dropout; the library size shrinks accordingly), shows the network
        every zero as the mask token, and scores the per-gene predictions on the log-normalised
        scale: on the dropped entries (target: their hidden value), on the genes that really
        read zero (target: 0) and on the visible values (target: the value), each group averaged
        separately (``dropout_mse``, ``zero_mse``, ``observed_mse`` in ``model.history``).

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        batch_size
            Cells per minibatch (default 16).
        dropout_ratio
            Fraction of each cell's non-zero counts hidden per step.
        lr, weight_decay
            AdamW learning rate and weight decay.
        accelerator, devices
            Where to train, as in Lightning.
        train_size
            Fraction of cells trained on; the rest is the validation set.
        early_stopping
            Stop when ``validation_loss`` stops improving.
        plan_kwargs, datasplitter_kwargs, **trainer_kwargs
            As in :meth:`train`.

        """
        if not 0.0 < dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be between 0 and 1 (exclusive), got {dropout_ratio}")
        self.module.dropout_ratio = dropout_ratio
        result = self._fine_tune_phase(
            "impute",
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=None,
            early_stopping=early_stopping,
            plan_kwargs={"lr": lr, "weight_decay": weight_decay, **(plan_kwargs or {})},
            datasplitter_kwargs=datasplitter_kwargs,
            **trainer_kwargs,
        )
        self.is_imputer_trained_ = True
        return result

    # ------------------------------------------------------------------ inference helpers
    def _inference_chunks(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        **inference_kwargs,
    ) -> Iterator[tuple[torch.Tensor, dict]]:
        """Yield ``(counts, module.inference(...))`` per chunk of cells, without gradients."""
        check_batch_size(batch_size)
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size or DEFAULT_INFERENCE_BATCH_SIZE
        )
        self.module.eval()
        with torch.inference_mode():
            for tensors in loader:
                counts = tensors[REGISTRY_KEYS.X_KEY]
                yield counts, self.module.inference(counts, **inference_kwargs)

    # ------------------------------------------------------------------ classification
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        return_confidence: bool = False,
    ) -> np.ndarray | pd.DataFrame | tuple[np.ndarray, np.ndarray]:
        """Predict cell types with the classification head (see :meth:`train_classifier`).

        Parameters
        ----------
        adata
            AnnData with the genes of the registered one; defaults to it.
        indices
            Cells to predict; defaults to all.
        soft
            Return class probabilities (softmax) instead of labels.
        batch_size
            Cells per chunk (default 16).
        return_confidence
            With hard labels, also return each cell's confidence: the largest class probability.

        Returns
        -------
        ``soft=False``: array of label strings, one per cell (and, with ``return_confidence``,
        a float array of confidences). ``soft=True``: DataFrame cells x classes of
        probabilities (rows sum to 1), indexed by ``obs_names``.
        Nothing is written into ``adata``; the documented place to store the results is::

            labels, confidence = model.predict(return_confidence=True)
            adata.obs["schyena_prediction"] = labels
            adata.obs["schyena_confidence"] = confidence

        """
        classes = self._label_classes()
        if self.module.classifier is None or not classes:
            raise ValueError(
                "this model has no classification head: register labels with "
                "SCHyena.setup_anndata(adata, labels_key=...) and call model.train_classifier()."
            )
        if not getattr(self, "is_classifier_trained_", False):
            raise RuntimeError("the classification head is untrained; call model.train_classifier() first.")
        chunks = [
            torch.softmax(out["logits"].float(), dim=1).cpu().numpy()
            for _, out in self._inference_chunks(adata, indices, batch_size)
        ]
        probabilities = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, len(classes)))
        if soft:
            target = self._validate_anndata(adata)
            names = target.obs_names if indices is None else target.obs_names[np.asarray(indices)]
            return pd.DataFrame(probabilities, index=names, columns=classes)
        labels = np.asarray(classes, dtype=object)[probabilities.argmax(1)]
        if return_confidence:
            return labels, probabilities.max(1)
        return labels

    # ------------------------------------------------------------------ imputation
    def _imputation_columns(
        self, adata: AnnData, gene_list: Sequence[str] | None
    ) -> tuple[np.ndarray, pd.Index]:
        """Vocabulary positions and names of the output genes, in output order.

        Output genes are the genes of ``adata`` that the model's vocabulary knows (all of them
        for a model trained on ``adata``), in ``adata.var_names`` order, or ``gene_list``.
        """
        gene_index = self.module.gene_index
        if gene_index is None:
            vocab_positions = np.arange(len(self.gene_vocabulary))
            names = pd.Index(adata.var_names)
        else:
            index = gene_index.cpu().numpy()
            measured = np.flatnonzero(index >= 0)
            order = np.argsort(index[measured])  # data-column order
            vocab_positions = measured[order]
            names = pd.Index(adata.var_names[index[vocab_positions]])
        if gene_list is None:
            return vocab_positions, names
        gene_list = [gene_list] if isinstance(gene_list, str) else list(gene_list)
        lookup = names.get_indexer(gene_list)
        unknown = [g for g, i in zip(gene_list, lookup, strict=True) if i < 0]
        if unknown:
            shown = ", ".join(repr(g) for g in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"gene_list names genes the model cannot impute for this data: {shown}{more}. "
                "Use names from adata.var_names that are in model.gene_vocabulary."
            )
        return vocab_positions[lookup], names[lookup]

    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        keep_observed: bool = True,
        count_scale: bool = False,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Impute every gene of every cell (dropout recovery).

        Every measured zero is shown to the network as the mask token and its value is
        predicted from the rest of the cell (the per-gene head, clipped at 0). Works after
        pre-training alone; :meth:`train_imputer` fine-tunes for it.

        Parameters
        ----------
        adata
            AnnData with the genes of the registered one; defaults to it.
        indices
            Cells to impute; defaults to all.
        gene_list
            Genes (columns) to return, in this order; default: every gene of ``adata`` that is
            in the model's vocabulary. An unknown name raises a ``ValueError`` naming it.
        batch_size
            Cells encoded at a time (default 16): memory stays bounded by the chunk, and the
            result does not depend on it.
        keep_observed
            ``True`` (default): measured non-zero values are returned as they are and only zeros
            are imputed. ``False``: every entry is replaced by the model's prediction (a
            denoised matrix).
        count_scale
            Return counts instead of log-normalised values: ``expm1`` of the value times the
            cell's library size (total counts of the registered data) over ``target_sum``.
        return_numpy
            Return a ``float32`` array instead of a DataFrame.

        Returns
        -------
        Cells x genes, log-normalised (``log1p(count / library * target_sum)``) unless
        ``count_scale``. Nothing is written into ``adata``; the documented place to store it is
        ``adata.layers["schyena_imputed"] = model.get_imputed_expression(return_numpy=True)``
        (with the default ``gene_list``).

        """
        self._check_if_trained(warn=True)
        target = self._validate_anndata(adata)
        vocab_positions, names = self._imputation_columns(target, gene_list)
        positions = torch.as_tensor(vocab_positions, dtype=torch.long)
        chunks = []
        for counts, out in self._inference_chunks(adata, indices, batch_size, mask_zeros=True):
            prediction = out["predicted_expression"].float().clamp_min(0.0)
            if keep_observed:
                observed = out["values"]
                prediction = torch.where(observed > 0, observed, prediction)
            prediction = prediction[:, positions.to(prediction.device)]
            if count_scale:
                library = counts.float().sum(dim=1, keepdim=True).to(prediction.device)
                prediction = torch.expm1(prediction) * library / self.module.target_sum
            chunks.append(prediction.cpu().numpy().astype(np.float32))
        result = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, len(names)), np.float32)
        if return_numpy:
            return result
        cells = target.obs_names if indices is None else target.obs_names[np.asarray(indices)]
        return pd.DataFrame(result, index=cells, columns=names)
