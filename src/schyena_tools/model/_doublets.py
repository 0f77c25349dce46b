"""Doublet detection: artificial doublets, the detector's training and its scores (mixin of :class:`SCHyena`).

A doublet is two cells captured as one. As scrublet and scvi-tools' SOLO do, the detector
learns from **artificial doublets** made from the registered data itself (the summed counts of
two random cells) against the registered cells, and scores each cell with the probability of
being a doublet. By default it is a linear probe on the frozen encoder (cell embedding, every
gene's expression and the cell's depth; :class:`~schyena_tools.nn.DoubletClassifier`), fitted
by cross-fitting so that no registered cell is scored by a readout that was trained on it;
``max_epochs=N`` then fine-tunes encoder and head with fresh doublets in every minibatch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from schyena_tools.validation import check_batch_size, check_number

from ._linear_readout import (
    readout_features,
    set_readout_standardization,
    solve_logistic,
    write_readout_weights,
)
from ._results import check_keys_free, fill_rows, store
from ._training import DEFAULT_BATCH_SIZE, check_plan_kwargs, check_trainer_kwargs

#: Registered cells the probe is fitted on at most (a random subset beyond that), and as many
#: artificial doublets: their features (``cells x genes`` floats) are held in memory. Cells
#: beyond the subset are scored by the final readout, which never saw them.
DOUBLET_PROBE_MAX_CELLS = 2500


def doublet_parents(n_cells: int, n_doublets: int, seed: int) -> np.ndarray:
    """``(n_doublets, 2)`` indices of two different cells per artificial doublet (uniform pairs)."""
    if n_cells < 2:
        raise ValueError(f"artificial doublets need at least 2 cells, got {n_cells}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n_cells, n_doublets)
    # A uniform second cell among the other n_cells - 1.
    second = (first + rng.integers(1, n_cells, n_doublets)) % n_cells
    return np.stack([first, second], axis=1)


def _rows(matrix, index: np.ndarray) -> np.ndarray:
    """Dense ``float32`` rows ``index`` of a registered matrix (sparse, dense or file-backed)."""
    unique, inverse = np.unique(index, return_inverse=True)
    block = matrix[unique]
    block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)  # sparse, backed or dense
    return np.asarray(block, dtype=np.float32)[inverse]


def doublet_count_batches(matrix, parents: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Minibatches of artificial doublets: the summed count rows of each pair of ``parents``."""
    for start in range(0, len(parents), batch_size):
        pairs = parents[start : start + batch_size]
        yield torch.from_numpy(_rows(matrix, pairs[:, 0]) + _rows(matrix, pairs[:, 1]))


def posterior_logit(logit: np.ndarray, n_doublets: int, n_cells: int, rate: float) -> np.ndarray:
    """Doublet-vs-singlet logits of a readout trained at ``n_doublets : n_cells``, at the prior ``rate``.

    Bayes' rule: the training prior's log odds are taken out and those of the expected doublet
    rate put in, so that ``sigmoid`` of the result is the probability of being a doublet in data
    where a fraction ``rate`` of the cells are doublets.
    """
    return logit - math.log(n_doublets / n_cells) + math.log(rate / (1.0 - rate))


class DoubletMixin:
    """``train_doublet_detector`` and ``predict_doublets`` for :class:`~schyena_tools.SCHyena`."""

    def _doublet_features(self, batches, n_batches: int, description: str | None) -> dict:
        """Cell embedding, expression and depth of each cell in ``batches`` (frozen encoder)."""
        embeddings, values, depths, missing = [], [], [], None
        for _, out in self._inference_on_counts(batches, description, n_batches):
            embeddings.append(out["cell_embedding"].float().cpu())
            values.append(out["values"].float().cpu())
            depths.append(out["log_depth"].float().cpu())
            missing = out["missing"]
        return {
            "cell_embedding": torch.cat(embeddings),
            "expression": torch.cat(values),
            "log_depth": torch.cat(depths),
            "missing": None if missing is None else missing.cpu(),
        }

    def train_doublet_detector(
        self,
        n_doublets: int | None = None,
        expected_doublet_rate: float = 0.05,
        n_folds: int = 5,
        probe_penalty: float = 1.0,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        seed: int | None = None,
        progress_bar: bool = True,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the doublet detector on artificial doublets made from the registered cells.

        Artificial doublets are the summed raw counts of two registered cells drawn at random
        (as in scrublet and SOLO). By default (``max_epochs=None``) the detector is a **linear
        probe** of the frozen encoder: an L2-penalised logistic regression, real cells against
        doublets, on the standardised cell embedding, the standardised expression of every
        vocabulary gene and the standardised ``log1p`` depth (two cells carry about twice the
        counts of one; :class:`~schyena_tools.nn.DoubletClassifier`). It is **cross-fitted**:
        the cells are split into ``n_folds`` folds and each cell is scored by a readout fitted
        on the other folds and on the doublets made from them only, so that a real doublet
        among the registered cells is not scored by a readout that learned it as a singlet. The
        final readout, fitted on everything, scores other data (:meth:`predict_doublets` with
        ``adata``).

        ``max_epochs=N`` then fine-tunes encoder and head for ``N`` epochs, with a fresh
        artificial doublet for every cell of every minibatch. The registered cells are then
        scored by the fine-tuned model, which trained on them (as SOLO scores its cells); the
        probe alone keeps every score out-of-fold.

        Scores are probabilities at the prior ``expected_doublet_rate``: the readout's odds are
        corrected from the doublet : cell ratio it was trained at to that rate (Bayes' rule),
        and ``predicted_doublet`` is ``doublet_score > 0.5``.

        Parameters
        ----------
        n_doublets
            Artificial doublets for the probe; default: as many as the cells probed (all the
            registered cells up to ``DOUBLET_PROBE_MAX_CELLS``, a random subset beyond).
        expected_doublet_rate
            Fraction of doublets expected in the data (scrublet's default is 0.05; 10x
            Chromium loads give about 0.8% per 1,000 cells recovered).
        n_folds
            Folds of the cross-fitting (at least 2).
        probe_penalty
            L2 penalty of the probe (scikit-learn's ``1 / C``).
        max_epochs
            Epochs of fine-tuning after the probe; ``None`` (default): the probe alone.
        batch_size
            Cells per minibatch (default 16; fine-tuning reads twice as many rows: each cell and
            one doublet).
        lr, weight_decay
            AdamW settings of the fine-tuning (the head learns 10x faster than the encoder).
        accelerator, devices
            Where to fine-tune, as in Lightning.
        seed
            Seed of the artificial doublets and the folds; default: ``scvi.settings.seed``.
        progress_bar
            Show progress bars.
        plan_kwargs
            Extra arguments of :class:`~schyena_tools.model.SCHyenaTrainingPlan` (fine-tuning).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (fine-tuning).

        Examples
        --------
        >>> model.train_doublet_detector()
        >>> doublets = model.predict_doublets()
        >>> adata.obs["doublet_score"] = doublets["doublet_score"]

        """
        check_trainer_kwargs("train_doublet_detector", trainer_kwargs)
        check_number(
            expected_doublet_rate,
            "expected_doublet_rate",
            minimum=0,
            maximum=1,
            exclusive_minimum=True,
            exclusive_maximum=True,
        )
        check_number(n_folds, "n_folds", integer=True, minimum=2)
        check_number(probe_penalty, "probe_penalty", minimum=0, exclusive_minimum=True)
        if n_doublets is not None:
            check_number(n_doublets, "n_doublets", integer=True, minimum=1)
        if max_epochs is not None:
            check_number(
                max_epochs, "max_epochs", integer=True, minimum=0, meaning=" (non-negative, or None)"
            )
        check_batch_size(batch_size)
        plan = {
            "lr": lr,
            "weight_decay": weight_decay,
            "head_lr_factor": 10.0,
            "warmup_fraction": 0.1,
            "cosine_decay": True,
            **(plan_kwargs or {}),
        }
        check_plan_kwargs(plan)
        n_cells = self.adata.n_obs
        if n_cells < 2 * n_folds:
            raise ValueError(
                f"the doublet detector's {n_folds}-fold cross-fitting needs at least {2 * n_folds} "
                f"registered cells, got {n_cells}; pass n_folds=2 or register more cells."
            )
        self._validate_anndata()
        from scvi import settings

        seed = (settings.seed or 0) if seed is None else seed
        rng = np.random.default_rng(seed)
        probed = np.arange(n_cells)
        if n_cells > DOUBLET_PROBE_MAX_CELLS:
            probed = np.sort(rng.choice(n_cells, DOUBLET_PROBE_MAX_CELLS, replace=False))
        n_doublets = len(probed) if n_doublets is None else n_doublets
        # Parents drawn among the probed cells (positions into `probed`).
        parents = doublet_parents(len(probed), n_doublets, seed + 1)
        batch = batch_size or DEFAULT_BATCH_SIZE
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        show = "Doublet detector: " if progress_bar else None

        real = self._doublet_features(
            (torch.from_numpy(_rows(matrix, probed[i : i + batch])) for i in range(0, len(probed), batch)),
            math.ceil(len(probed) / batch),
            show and show + "encoding the cells",
        )
        fake = self._doublet_features(
            doublet_count_batches(matrix, probed[parents], batch),
            math.ceil(n_doublets / batch),
            show and show + "encoding artificial doublets",
        )
        head = self.module.doublet_classifier
        both = {
            key: torch.cat([real[key], fake[key]]) for key in ("cell_embedding", "expression", "log_depth")
        }
        set_readout_standardization(
            head, both["cell_embedding"], both["expression"], real["missing"], both["log_depth"]
        )
        features = readout_features(
            head,
            both["cell_embedding"],
            both["expression"],
            real["missing"],
            both["log_depth"],
            dtype=torch.float32,
        )
        del both
        labels = torch.cat(
            [torch.zeros(len(probed), dtype=torch.long), torch.ones(n_doublets, dtype=torch.long)]
        )

        final_weight, final_bias, _ = solve_logistic(features, labels, 2, probe_penalty)
        write_readout_weights(head, final_weight, final_bias)
        # Cross-fitting: fold k's cells are scored by a readout that saw neither them nor any
        # doublet made from them.
        fold = rng.permutation(np.arange(len(probed)) % n_folds)
        out_of_fold = np.empty(len(probed), dtype=np.float64)
        for k in range(n_folds):
            train_real = fold != k
            train_fake = (fold[parents[:, 0]] != k) & (fold[parents[:, 1]] != k)
            rows = np.concatenate([np.flatnonzero(train_real), len(probed) + np.flatnonzero(train_fake)])
            weight, bias, _ = solve_logistic(
                features[rows], labels[rows], 2, probe_penalty, init=(final_weight, final_bias)
            )
            scored = torch.from_numpy(np.flatnonzero(~train_real))
            logits = (features[scored] @ weight.T + bias).double()
            out_of_fold[~train_real] = posterior_logit(
                (logits[:, 1] - logits[:, 0]).numpy(),
                int(train_fake.sum()),
                int(train_real.sum()),
                expected_doublet_rate,
            )
        del features
        self.doublet_prior_shift_ = float(
            posterior_logit(0.0, n_doublets, len(probed), expected_doublet_rate)
        )
        self.expected_doublet_rate_ = float(expected_doublet_rate)
        self.is_doublet_detector_trained_ = True

        if max_epochs:
            trainer_kwargs.setdefault("enable_progress_bar", progress_bar)
            self._train_phase(
                "doublet",
                inference_kwargs={"add_doublets": True},
                max_epochs=max_epochs,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                train_size=1.0,
                validation_size=None,
                early_stopping=False,
                plan_kwargs=plan,
                **trainer_kwargs,
            )
            # Trained one doublet per cell: no prior shift from the training ratio.
            self.doublet_prior_shift_ = float(posterior_logit(0.0, 1, 1, expected_doublet_rate))
            self._doublet_scores = None  # in-sample now: computed on request
            return None
        logits = np.empty(n_cells, dtype=np.float64)
        logits[probed] = out_of_fold
        others = np.setdiff1d(np.arange(n_cells), probed)
        if others.size:
            logits[others] = self._doublet_logits(self.adata, others, batch_size, show and show + "scoring")
        # Kept for predict_doublets() on these cells; not saved (a loaded model may sit on other cells).
        self._doublet_scores = (
            self.adata.obs_names.copy(),
            (1.0 / (1.0 + np.exp(-logits))).astype(np.float32),
        )
        return None

    def _doublet_logits(self, adata: AnnData, indices, batch_size, progress_bar) -> np.ndarray:
        """Doublet log odds at the expected rate, from the trained head, for validated ``adata``."""
        chunks = (
            (out["doublet_logits"][:, 1] - out["doublet_logits"][:, 0]).double().cpu().numpy()[:, None]
            for _, out in self._inference_batches(adata, indices, batch_size, progress_bar)
        )
        n_cells = adata.n_obs if indices is None else len(indices)
        return fill_rows(chunks, n_cells, 1, dtype=np.float64)[:, 0] + self.doublet_prior_shift_

    def predict_doublets(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        threshold: float = 0.5,
        batch_size: int | None = None,
        progress_bar: bool = True,
        key_added: str | None = None,
        overwrite: bool = False,
    ) -> pd.DataFrame:
        """Doublet scores of cells, after :meth:`train_doublet_detector`.

        Parameters
        ----------
        adata
            AnnData with the genes of the registered one; default: the registered cells. Their
            scores are those the probe computed out-of-fold while training (no pass over the
            data); after fine-tuning, or on a model loaded from disk, they are computed by the
            trained detector, which saw these cells as singlets.
        indices
            Cells to score; default: all.
        threshold
            ``predicted_doublet`` is ``doublet_score > threshold``.
        batch_size
            Cells per minibatch (default 16).
        progress_bar
            Show a progress bar over the minibatches.
        key_added
            Also write ``f"{key_added}_doublet_score"`` and ``f"{key_added}_predicted_doublet"``
            into ``adata.obs`` (e.g. ``key_added="schyena"``, what the command line writes);
            checked before any work: the columns must not exist (unless ``overwrite``) and
            ``indices`` must be ``None``.
        overwrite
            Replace existing columns.

        Returns
        -------
        DataFrame indexed by ``obs_names`` with ``doublet_score`` (probability of being a
        doublet at the expected doublet rate given to :meth:`train_doublet_detector`) and
        ``predicted_doublet`` (bool).

        """
        if not getattr(self, "is_doublet_detector_trained_", False):
            raise RuntimeError(
                "the doublet detector is untrained; call model.train_doublet_detector() first."
            )
        check_number(threshold, "threshold", minimum=0, maximum=1)
        destination = self.adata if adata is None else adata
        columns = [f"{key_added}_doublet_score", f"{key_added}_predicted_doublet"]
        if key_added is not None:
            check_keys_free(destination, "obs", columns, overwrite, indices)
        stored = getattr(self, "_doublet_scores", None)
        selected = slice(None) if indices is None else np.asarray(indices)
        if adata is None and stored is not None and stored[0].equals(self.adata.obs_names):
            self._validate_anndata()
            scores = stored[1][selected]
        else:
            target = self._validate_anndata(adata)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow -> score 0 or 1
                logits = self._doublet_logits(
                    target, indices, batch_size, "Scoring doublets" if progress_bar else None
                )
                scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        names = destination.obs_names[selected]
        result = pd.DataFrame(
            {"doublet_score": scores.astype(np.float32), "predicted_doublet": scores > threshold}, index=names
        )
        if key_added is not None:
            store(destination, "obs", columns[0], result["doublet_score"].to_numpy())
            store(destination, "obs", columns[1], result["predicted_doublet"].to_numpy())
        return result
