"""Cell-type classification: labels, fine-tuning and prediction (mixin of :class:`SCHyena`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from schyena_tools.validation import check_number

from ._checkpoint import RestoreBestWeights
from ._confidence import fit_temperature, fit_unknown_reference, project, unknown_scores
from ._linear_readout import (
    PROBE_EMBEDDING_WEIGHT,
    cross_fitted_logits,
    early_stopped_probe,
    probe_cells,
    readout_features,
    set_readout_standardization,
    solve_logistic,
    write_readout_weights,
)
from ._results import check_keys_free, fill_rows, store
from ._training import DEFAULT_BATCH_SIZE, check_plan_kwargs, check_trainer_kwargs
from ._training_plan import is_distributed

#: L-BFGS iterations of the linear probe by default: enough to converge.
PROBE_CONVERGED = 500

#: Optimiser steps the default ``train_classifier`` aims at (see :func:`classifier_epochs`).
CLASSIFIER_TARGET_STEPS = 300


def classifier_epochs(
    n_train_cells: int, batch_size: int, target_steps: int = CLASSIFIER_TARGET_STEPS
) -> int:
    """Epochs for about ``target_steps`` optimiser steps over ``n_train_cells``, within [2, 100].

    A small labelled set needs many passes (a classifier on ~150 cells in minibatches of 16
    makes 10 steps per epoch), a large one few; the cost of the default fine-tuning stays near
    ``target_steps`` minibatches whatever the data size, like scvi-tools' epoch heuristic.
    """
    steps_per_epoch = max(math.ceil(n_train_cells / batch_size), 1)
    return int(min(max(math.ceil(target_steps / steps_per_epoch), 2), 100))


class ClassificationMixin:
    """``train_classifier`` and ``predict`` for :class:`~schyena_tools.SCHyena`.

    Fine-tuning reuses the generic training phase with the ``"classify"`` objective
    (cross-entropy of the classification head); prediction reads the head in the model's one
    inference loop.
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
    def train_classifier(
        self,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        head_lr_factor: float = 10.0,
        warmup_fraction: float = 0.1,
        mask_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        freeze_encoder: bool = False,
        linear_probe: bool = True,
        probe_penalty: float = 1.0,
        probe_iterations: int | str = "cv",
        probe_embedding_weight: float = PROBE_EMBEDDING_WEIGHT,
        calibrate: bool = True,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 1.0,
        early_stopping: bool = False,
        early_stopping_patience: int = 10,
        restore_best: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the cell-type classifier on the registered ``labels_key``.

        The head (:class:`~schyena_tools.nn.CellTypeClassifier`) reads the cell embedding, the
        expression of every vocabulary gene (and of the registered genes outside the
        vocabulary, which the encoder cannot read) and the encoder's gene states. By default
        (``max_epochs=None``) its linear readout is fitted as a **linear probe**: an
        L2-penalised multinomial logistic regression on the standardised cell embedding and
        expression of the training cells on the frozen pre-trained encoder's features,
        stopped early after the number of L-BFGS iterations that 5-fold cross-validation on
        the training cells chooses (seconds, one pass over the labelled cells). ``max_epochs=N``
        fine-tunes head and encoder for ``N`` epochs from that probe (``linear_probe=False``:
        from a random head). Cells whose label is the ``unlabeled_category`` of
        :meth:`setup_anndata` are neither trained on nor validated on. After fine-tuning,
        ``model.history`` holds ``train_loss``, ``accuracy_train`` and, with validation cells,
        ``validation_loss`` and ``accuracy_validation`` per epoch (this phase alone also in
        ``model.phase_history_["classify"]``).

        Why the probe is the default (chosen on inner validation splits of ~140 labelled cells
        of La Manno 2016 and Camp 2015; see the fine-tuning recipe page of the benchmarks):
        fine-tuning ~100,000 weights on so few cells overfits (100% training accuracy by epoch
        ~9), and every fine-tuning recipe tried, from a random head or from the probe, scored
        at or below the probe alone, which is also the cheapest by far (no backward pass
        through the encoder; minutes saved per run at full length on a CPU). When
        fine-tuning, the recipe measured best is used: every labelled cell trained on,
        a 10% learning-rate warm-up then a cosine decay, a head learning 10x faster than the
        encoder. A warning says so if the classifier ends up predicting one class for every
        cell.

        Parameters
        ----------
        max_epochs
            Epochs of fine-tuning after the linear probe. ``None`` (default): none, the probe
            alone; with ``linear_probe=False``, enough for about ``CLASSIFIER_TARGET_STEPS``
            optimiser steps, between 2 and 100 epochs (30 epochs for 150 cells in minibatches
            of 16, 2 for 3,000 cells).
        batch_size
            Cells per minibatch (default 16).
        lr, weight_decay
            AdamW learning rate of the encoder, and weight decay.
        head_lr_factor
            Learning rate of the classification head as a multiple of ``lr``.
        warmup_fraction
            Fraction of the steps over which the learning rate rises to its full value; a
            cosine decay to 0 follows.
        mask_ratio
            Augmentation: at every training step, hide this fraction of each cell's non-zero
            values (and a tenth of that of its zeros) behind the mask token, as in
            pre-training. Validation and prediction see every value.
        label_smoothing
            Label smoothing of the cross-entropy.
        freeze_encoder
            Train the head only; the encoder (pre-trained weights) stays fixed. Cheaper in
            memory, usually less accurate.
        linear_probe
            Before fine-tuning, fit the head's linear readout of the standardised cell
            embedding and gene expression on the frozen encoder's features of the training
            cells (a logistic regression, stopped early: ``probe_iterations``; at most 5,000
            cells drawn at random). With ``max_epochs=0`` (or ``None``) the probe is the whole training.
        probe_penalty
            L2 penalty of the linear probe (scikit-learn's ``1 / C``).
        probe_iterations
            ``"cv"`` (default): stop the probe's L-BFGS early, after the number of iterations
            from ``(5, 10, 20, 50, 100, 500)`` whose 5-fold out-of-fold macro-F1 on the
            training cells is best (early stopping regularises a path started at zero; on
            inner validation splits of four transfer targets it beat the probe fitted to
            convergence, e.g. La Manno macro-F1 0.68 vs 0.43; fine-tuning recipe page, round
            8; on the downstream benchmark's held-out folds it lifts three of four transfer
            targets by 0.01-0.05 and costs 0.008 on Zeisel's 7 classes, 0.943 vs 0.950); the
            chosen number is ``model.probe_iterations_``. An integer: at most that many
            iterations (500: to convergence, the previous default).
        probe_embedding_weight
            The probe's standardised cell-embedding columns are multiplied by this before its
            fit (the same as a ``probe_embedding_weight ** 2`` times weaker L2 penalty on them,
            and a path that moves along them sooner): the embedding's ``d_model`` columns
            count for more beside the ~20,000 expression columns. ``1``: as the expression.
            The default, 2, was chosen on inner validation splits of four transfer targets
            (macro-F1 mean 0.721 vs 0.714 at 1 and 0.719 at 3; La Manno 0.663 vs 0.641, no
            target lower; fine-tuning recipe page, round 9); on the downstream benchmark's
            held-out transfer folds it lifts La Manno from 0.585 to 0.667 on the folds both
            runs share, moves the other targets by at most 0.005 and costs 0.008-0.012 on
            the Zeisel sets the encoder was pre-trained on (downstream benchmark page).
        calibrate
            Fit a temperature that makes the confidences of :meth:`predict` calibrated
            (temperature scaling; the labels do not change): on the probe's out-of-fold
            predictions of its training cells (5-fold cross-fitting, no cell held back), or,
            after fine-tuning with validation cells, on theirs. After fine-tuning without
            validation cells the temperature is 1 (uncalibrated: pass ``train_size < 1``).
            Stored as ``model.classifier_temperature_``.
        accelerator, devices
            Where to train, as in Lightning.
        train_size
            Fraction of the labelled cells trained on; the rest (drawn at random with
            scvi-tools' seed) is the validation set (``validation_loss`` and
            ``accuracy_validation`` in the history). ``1.0`` (default) trains on all of them.
        early_stopping
            With validation cells: stop when ``validation_loss`` has not improved for
            ``early_stopping_patience`` epochs.
        early_stopping_patience
            Epochs without improvement before stopping.
        restore_best
            With validation cells: end with the weights of the epoch with the lowest
            ``validation_loss``.
        plan_kwargs
            Extra arguments of :class:`~schyena_tools.model.SCHyenaTrainingPlan`.
        datasplitter_kwargs
            Extra arguments of :class:`scvi.dataloaders.DataSplitter`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.

        """
        check_trainer_kwargs("train_classifier", trainer_kwargs)
        labelled = self._check_classifier_labels()
        if max_epochs is not None:
            check_number(
                max_epochs, "max_epochs", integer=True, minimum=0, meaning=" (non-negative, or None)"
            )
        if max_epochs == 0 and not linear_probe:
            raise ValueError("max_epochs=0 trains nothing without the linear probe; pass linear_probe=True.")
        if linear_probe:
            check_number(probe_penalty, "probe_penalty", minimum=0, exclusive_minimum=True)
            if probe_iterations != "cv":
                check_number(probe_iterations, "probe_iterations", integer=True, minimum=1)
            check_number(probe_embedding_weight, "probe_embedding_weight", minimum=0, exclusive_minimum=True)
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
        if max_epochs is None:  # the probe alone; without it, about CLASSIFIER_TARGET_STEPS steps
            max_epochs = (
                0 if linear_probe else classifier_epochs(len(train_idx), batch_size or DEFAULT_BATCH_SIZE)
            )
        validated = val_idx.size > 0
        best = None
        if validated and restore_best and not is_distributed(trainer_kwargs.get("strategy")):
            best = RestoreBestWeights("validation_loss")
            trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), best]
        if validated and early_stopping:
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        plan = {
            "augment_kwargs": {"mask_ratio": mask_ratio, "zero_mask_ratio": mask_ratio / 10}
            if mask_ratio
            else {},
            "label_smoothing": label_smoothing,
            "lr": lr,
            "weight_decay": weight_decay,
            "head_lr_factor": head_lr_factor,
            "warmup_fraction": warmup_fraction,
            "cosine_decay": True,
            **(plan_kwargs or {}),
        }
        check_plan_kwargs(plan)  # before the probe: no work is done with a bad setting

        self.classifier_temperature_ = 1.0
        probed, probe_predictions = probe_cells(train_idx, settings.seed), None
        if linear_probe:
            probe_predictions = self._fit_linear_probe(
                probed,
                batch_size,
                probe_penalty,
                show_progress=trainer_kwargs.get("enable_progress_bar", True),
                calibrate=calibrate,
                iterations=probe_iterations,
                embedding_weight=probe_embedding_weight,
            )
        if max_epochs == 0:
            self.is_classifier_trained_ = True
            self.classifier_best_epoch_ = None
            if validated:
                self._warn_if_collapsed(val_idx, "validation", 0)
            elif probe_predictions is not None:  # the probe's own predictions: no second pass
                self._warn_if_collapsed(probed, "training", 0, predicted=probe_predictions)
            else:
                self._warn_if_collapsed(train_idx, "training", 0)
            return None
        frozen = []
        if freeze_encoder:
            for parameter in self.module.encoder.parameters():
                if parameter.requires_grad:
                    parameter.requires_grad_(False)
                    frozen.append(parameter)
        try:
            result = self._train_phase(
                "classify",
                max_epochs=max_epochs,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size if validated else 1.0,
                validation_size=None,
                early_stopping=early_stopping and validated,
                plan_kwargs=plan,
                datasplitter_kwargs=splitter_kwargs,
                **trainer_kwargs,
            )
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        self.is_classifier_trained_ = True
        self.classifier_best_epoch_ = None if best is None else best.best_epoch
        # Fine-tuned weights: the probe's temperature no longer applies; validation cells give one.
        self.classifier_temperature_ = 1.0
        if validated and calibrate:
            codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
            self.classifier_temperature_ = fit_temperature(
                self._class_logits(self.adata, val_idx), codes[val_idx]
            )
        self._set_unknown_reference(probed, batch_size)
        self._warn_if_collapsed(
            val_idx if validated else train_idx, "validation" if validated else "training", max_epochs
        )
        return result

    def _fit_linear_probe(
        self,
        cells: np.ndarray,
        batch_size: int | None,
        penalty: float,
        show_progress: bool = True,
        calibrate: bool = True,
        iterations: int | str = 500,
        embedding_weight: float = 1.0,
    ) -> np.ndarray:
        """Fit the head's linear readout on the frozen encoder's features of ``cells``.

        The embedding columns are multiplied by ``embedding_weight`` for the fit, and the
        solved weights of those columns by the same factor before they are written into the
        head: its logits are the fitted model's on the head's own (unscaled) inputs.

        Also the temperature (from out-of-fold logits, with ``calibrate``) and the reference of
        the unknown-type score (these cells' embeddings), from the same single pass. Returns
        the fitted head's predicted class codes of ``cells`` (in-sample).
        """
        from scvi import settings

        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        embeddings, values, missing = [], [], None
        description = "Linear probe: encoding the labelled cells" if show_progress else None
        for _, out in self._inference_batches(self.adata, cells, batch_size, description):
            embeddings.append(out["cell_embedding"].float().cpu())
            values.append(out["classifier_expression"].float().cpu())
            missing = out["classifier_unseen"]
        embedding, expression = torch.cat(embeddings), torch.cat(values)
        labels = torch.as_tensor(codes[cells]).long()
        head = self.module.classifier
        set_readout_standardization(head, embedding, expression, missing)
        features = readout_features(head, embedding, expression, missing)
        del expression
        d_model = embedding.shape[1]
        features[:, :d_model] *= embedding_weight  # in place: the features are cells x genes
        logits = None
        if iterations == "cv" and len(cells) >= 10:
            iterations, weight, bias, logits = early_stopped_probe(
                features, labels, head.out_features, penalty, seed=settings.seed
            )
        else:
            iterations = PROBE_CONVERGED if iterations == "cv" else iterations  # too few to choose
            weight, bias, _ = solve_logistic(
                features, labels, head.out_features, penalty, max_iter=iterations
            )
        self.probe_iterations_ = iterations
        if logits is None and len(cells) >= 10:
            logits = cross_fitted_logits(
                features, labels, head.out_features, penalty, seed=settings.seed, init=(weight, bias)
            )
        weight = weight.clone()
        weight[:, :d_model] *= embedding_weight
        features[:, :d_model] /= embedding_weight  # the head's inputs again (unknown-type score)
        write_readout_weights(head, weight, bias)
        if logits is None:  # too few cells to cross-fit: their own (in-sample) logits
            logits = features @ weight.T + bias  # (the scaled weights on the head's inputs)
        elif calibrate:
            self.classifier_temperature_ = fit_temperature(logits, labels)
        confidences = self._calibrated_probabilities(logits.float().numpy()).max(1)
        self.unknown_reference_ = fit_unknown_reference(features, confidences, settings.seed)
        return (features @ weight.T + bias).argmax(1).numpy()

    def _set_unknown_reference(self, cells: np.ndarray, batch_size: int | None) -> None:
        """The unknown-type reference from the current network's view of the training ``cells``.

        After fine-tuning: the confidences are the training cells' own (in-sample).
        """
        from scvi import settings

        features, logits = [], []
        for _, out in self._inference_batches(self.adata, cells, batch_size, None):
            features.append(self._classifier_inputs(out))
            logits.append(out["logits"].float().cpu().numpy())
        confidences = self._calibrated_probabilities(np.concatenate(logits)).max(1)
        self.unknown_reference_ = fit_unknown_reference(torch.cat(features), confidences, settings.seed)

    def _classifier_inputs(self, out: dict) -> torch.Tensor:
        """The classifier's standardised inputs of one minibatch of inference outputs."""
        return readout_features(
            self.module.classifier,
            out["cell_embedding"],
            out["classifier_expression"],
            out["classifier_unseen"],
            dtype=torch.float32,
        )

    def _warn_if_collapsed(
        self, cells: np.ndarray, which: str, max_epochs: int, predicted: np.ndarray | None = None
    ) -> None:
        """Warn when the classifier predicts one class for every one of ``cells`` (of several).

        ``predicted``: the classifier's class codes of ``cells`` where known already (the
        probe's in-sample ones); otherwise one inference pass computes them.
        """
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        if np.unique(codes[cells]).size < 2:
            return
        if predicted is None:  # the registered data was validated when this phase started
            predicted = self._class_probabilities(self.adata, cells, None).argmax(1)
        predicted = np.unique(np.asarray(self._label_classes(), dtype=object)[predicted])
        if predicted.size == 1:
            warnings.warn(
                f"the classifier predicts {str(predicted[0])!r} for every one of the {cells.size} "
                f"{which} cells although they hold "
                f"{np.unique(codes[cells]).size} classes: it has not learned yet. Train longer "
                f"(max_epochs > {max_epochs}), label more cells per class, or lower lr.",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ prediction
    def _class_outputs(
        self,
        adata: AnnData,
        indices,
        batch_size: int | None,
        progress_bar: str | None = None,
        with_coordinates: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(cells, classes)`` of validated ``adata``, and (``with_coordinates``) the
        cells' coordinates in the unknown-type reference's principal components; one pass.
        """
        coordinates = []

        def chunks():
            for _, out in self._inference_batches(adata, indices, batch_size, progress_bar):
                if with_coordinates:
                    coordinates.append(project(self.unknown_reference_, self._classifier_inputs(out)))
                yield out["logits"].float().cpu().numpy()

        n_cells = adata.n_obs if indices is None else len(indices)
        logits = fill_rows(chunks(), n_cells, len(self._label_classes()))
        return logits, (torch.cat(coordinates) if with_coordinates else None)

    def _class_logits(self, adata: AnnData, indices, batch_size: int | None = None) -> np.ndarray:
        """The classification head's logits for validated ``adata``, ``(cells, classes)``."""
        return self._class_outputs(adata, indices, batch_size)[0]

    def _calibrated_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / T)`` with the fitted temperature (1 when none was fitted)."""
        temperature = getattr(self, "classifier_temperature_", 1.0)
        return (
            torch.softmax(torch.from_numpy(np.asarray(logits)).double() / temperature, dim=1).float().numpy()
        )

    def _class_probabilities(
        self, adata: AnnData, indices, batch_size: int | None, progress_bar: str | None = None
    ) -> np.ndarray:
        """Calibrated class probabilities for validated ``adata``, ``(cells, classes)``."""
        return self._calibrated_probabilities(
            self._class_outputs(adata, indices, batch_size, progress_bar)[0]
        )

    def _check_unknown_reference(self) -> None:
        if getattr(self, "unknown_reference_", None) is None:
            raise RuntimeError(
                "this classifier has no reference cells for the unknown-type score (it was trained "
                "by an earlier schyena-tools); call model.train_classifier() again."
            )

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        return_confidence: bool = False,
        progress_bar: bool = True,
        key_added: str | None = None,
        overwrite: bool = False,
        unknown_threshold: float | None = None,
        return_unknown_score: bool = False,
        unknown_label: str = "unknown",
    ) -> np.ndarray | pd.DataFrame | tuple[np.ndarray, ...]:
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
            With hard labels, also return each cell's confidence: the largest class probability,
            calibrated by the temperature that :meth:`train_classifier` fitted.
        progress_bar
            Show a progress bar over the minibatches.
        key_added
            Also write the results into ``adata.obs``: ``f"{key_added}_prediction"`` (the labels,
            categorical) and ``f"{key_added}_confidence"`` (e.g. ``key_added="schyena"``, the
            keys the command line writes). Not with ``soft``; checked before any work: the
            columns must not exist (unless ``overwrite``) and ``indices`` must be ``None``.
        overwrite
            Replace existing columns.
        unknown_threshold
            Label ``unknown_label`` every cell whose unknown-type score (see
            :meth:`get_unknown_scores`) is above this value, e.g. 0.99: a cell farther from the
            labelled training cells than 99% of them are from each other is called a type the
            reference does not hold. ``None`` (default): every cell gets a known type.
        return_unknown_score
            With hard labels, also return the unknown-type scores (after the confidences, if
            ``return_confidence``).
        unknown_label
            Label of the cells above ``unknown_threshold``.

        Returns
        -------
        ``soft=False``: array of label strings, one per cell (and, with ``return_confidence``,
        a float array of confidences; with ``return_unknown_score``, a float array of
        unknown-type scores). ``soft=True``: DataFrame cells x classes of
        probabilities (rows sum to 1), indexed by ``obs_names``. With ``key_added``,
        ``f"{key_added}_unknown_score"`` is written into ``adata.obs`` too.
        Nothing is written into ``adata`` unless ``key_added`` is given;
        ``model.predict(key_added="schyena")`` stores the results, as does::

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
        if unknown_threshold is not None:
            check_number(unknown_threshold, "unknown_threshold", minimum=0, maximum=1)
            if unknown_label in classes:
                raise ValueError(
                    f"unknown_label={unknown_label!r} is one of the classifier's classes; pass another "
                    "unknown_label."
                )
        has_reference = getattr(self, "unknown_reference_", None) is not None
        if unknown_threshold is not None or return_unknown_score:
            self._check_unknown_reference()
        wants_unknown = has_reference and (
            unknown_threshold is not None or return_unknown_score or key_added is not None
        )
        destination = self.adata if adata is None else adata
        columns = [f"{key_added}_prediction", f"{key_added}_confidence"]
        if has_reference:
            columns.append(f"{key_added}_unknown_score")
        if key_added is not None:
            if soft:
                raise ValueError("key_added writes labels and confidences; it cannot be used with soft=True.")
            check_keys_free(destination, "obs", columns, overwrite, indices)
        target = self._validate_anndata(adata)
        logits, coordinates = self._class_outputs(
            target,
            indices,
            batch_size,
            "Predicting" if progress_bar else None,
            with_coordinates=wants_unknown,
        )
        probabilities = self._calibrated_probabilities(logits)
        if soft:
            names = target.obs_names if indices is None else target.obs_names[np.asarray(indices)]
            return pd.DataFrame(probabilities, index=names, columns=classes)
        labels = np.asarray(classes, dtype=object)[probabilities.argmax(1)]
        confidence = probabilities.max(1).astype(np.float32)
        unknown = unknown_scores(self.unknown_reference_, coordinates, confidence) if wants_unknown else None
        categories = list(classes)
        if unknown_threshold is not None:
            labels[unknown > unknown_threshold] = unknown_label
            categories.append(unknown_label)
        if key_added is not None:
            store(destination, "obs", columns[0], pd.Categorical(labels.astype(str), categories=categories))
            store(destination, "obs", columns[1], confidence)
            if unknown is not None:
                store(destination, "obs", columns[2], unknown)
        results = (labels,)
        if return_confidence:
            results += (confidence,)
        if return_unknown_score:
            results += (unknown,)
        return results[0] if len(results) == 1 else results

    def get_unknown_scores(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress_bar: bool = True,
    ) -> np.ndarray:
        """How unlike the labelled training cells each cell is: a score in [0, 1].

        The mean of two ranks among the classifier's training cells of
        :meth:`train_classifier`: the fraction of them whose out-of-fold confidence is above
        this cell's, and the fraction that are closer to their 10th nearest training cell than
        this cell is (in 50 principal components of the classifier's standardised inputs: cell
        embedding and expression). Near 1: the cell is both unsure and far from every labelled
        type, a candidate for a type the reference never saw; pass ``unknown_threshold`` to
        :meth:`predict` to label such cells ``"unknown"``. How well it separates unseen types
        is measured in the benchmarks (leave one type out of Zeisel 2015 at a time).

        Parameters
        ----------
        adata
            AnnData with the genes of the registered one; defaults to it.
        indices
            Cells to score; defaults to all.
        batch_size
            Cells per minibatch (default 16).
        progress_bar
            Show a progress bar over the minibatches.

        Returns
        -------
        ``float32`` array, one score per cell.

        """
        if not getattr(self, "is_classifier_trained_", False):
            raise RuntimeError("the classification head is untrained; call model.train_classifier() first.")
        self._check_unknown_reference()
        target = self._validate_anndata(adata)
        logits, coordinates = self._class_outputs(
            target,
            indices,
            batch_size,
            "Scoring unknown types" if progress_bar else None,
            with_coordinates=True,
        )
        confidence = self._calibrated_probabilities(logits).max(1)
        return unknown_scores(self.unknown_reference_, coordinates, confidence)
