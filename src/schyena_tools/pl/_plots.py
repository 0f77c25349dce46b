"""Matplotlib plots of training, imputation and annotation results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from scipy import sparse

#: Colours of the training and validation curves (matplotlib's default cycle, first two).
_TRAIN_COLOUR = "#1f77b4"
_VALIDATION_COLOUR = "#ff7f0e"


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _clean(ax: Axes) -> None:
    """In the look of scanpy: no top or right spine, no grid."""
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(False)


# ---------------------------------------------------------------------- training history
def _metric_series(history: Mapping[str, pd.DataFrame], metric: str, split: str) -> pd.Series | None:
    """The per-epoch values of ``metric`` for ``split`` ("train" or "validation"), if logged.

    scvi-tools logs the total loss as ``train_loss``/``validation_loss`` and extra metrics as
    ``<metric>_train``/``<metric>_validation``; both spellings are looked up.
    """
    for key in (f"{split}_{metric}", f"{metric}_{split}"):
        if key in history:
            frame = history[key]
            return frame.iloc[:, 0].astype(float) if isinstance(frame, pd.DataFrame) else pd.Series(frame)
    return None


def _available_metrics(phase_history: Mapping[str, Mapping[str, pd.DataFrame]]) -> list[str]:
    names = set()
    for history in phase_history.values():
        for key in history:
            for split in ("train", "validation"):
                if key.startswith(f"{split}_"):
                    names.add(key[len(split) + 1 :])
                elif key.endswith(f"_{split}"):
                    names.add(key[: -len(split) - 1])
    return sorted(names)


def training_history(
    model,
    metric: str = "loss",
    phases: Sequence[str] | None = None,
    log_scale: bool = False,
    ax: Axes | None = None,
) -> Axes:
    """Training and validation curves of every training phase, one after the other.

    Each phase (``"pretrain"``, then for instance ``"classifier"`` or ``"imputer"``) is a block
    of epochs; dashed vertical lines separate the blocks, whose names are written above them.
    Phases optimise different losses, so compare curves within a phase, not across.

    Parameters
    ----------
    model
        A trained :class:`~schyena_tools.SCHyena` (its ``phase_history_`` is read), or the
        ``phase_history_`` mapping itself: phase name -> scvi-tools history dict.
    metric
        What to draw: ``"loss"`` (the training objective) or any other logged metric, e.g.
        ``"masked_mse"`` or ``"cell_mse"`` in pre-training.
    phases
        Phases to draw, in order; default all, in the order they were trained.
    log_scale
        Logarithmic y axis.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes.

    Examples
    --------
    >>> model.train(max_epochs=20)
    >>> st.pl.training_history(model)

    """
    phase_history = model if isinstance(model, Mapping) else getattr(model, "phase_history_", None)
    if not phase_history:
        raise ValueError(
            "the model has no training history: train it first (model.train(...)); "
            "training_history reads model.phase_history_."
        )
    if phases is None:
        phases = list(phase_history)
    unknown = [phase for phase in phases if phase not in phase_history]
    if unknown:
        raise KeyError(f"no training phase {unknown}; this model has {list(phase_history)}")

    ax = _new_axes(ax, (6, 4))
    offset = 0
    labelled: set[str] = set()
    for number, phase in enumerate(phases):
        history = phase_history[phase]
        train = _metric_series(history, metric, "train")
        validation = _metric_series(history, metric, "validation")
        n_epochs = max((len(s) for s in (train, validation) if s is not None), default=0)
        for series, colour, split in (
            (train, _TRAIN_COLOUR, "train"),
            (validation, _VALIDATION_COLOUR, "validation"),
        ):
            if series is None or len(series) == 0:
                continue
            epochs = offset + np.arange(1, len(series) + 1)
            ax.plot(
                epochs,
                series.to_numpy(),
                color=colour,
                marker="o",
                markersize=3,
                # one legend entry per split, not per phase
                label=split if split not in labelled else None,
            )
            labelled.add(split)
        if number > 0:
            ax.axvline(offset + 0.5, color="0.6", linestyle="--", linewidth=1)
        # The name sits inside the axes, centred on its block (a one-epoch block included),
        # so it is never cut off and never pushes the panel around in a grid of subplots.
        ax.text(
            offset + (n_epochs + 1) / 2,
            0.98,
            phase,
            transform=ax.get_xaxis_transform(),
            va="top",
            ha="center",
            fontsize="small",
            color="0.3",
            clip_on=True,
        )
        offset += n_epochs
    if not labelled:
        raise KeyError(
            f"metric {metric!r} was not logged in phases {list(phases)}; "
            f"logged metrics: {_available_metrics({p: phase_history[p] for p in phases})}"
        )
    ax.set_xlim(0.5, offset + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + 0.12 * (top - bottom))  # room for the phase names
    ax.set_xlabel("epoch (all phases in order)")
    ax.set_ylabel(metric.replace("_", " "))
    if log_scale:
        ax.set_yscale("log")
    ax.legend(frameon=False)
    _clean(ax)
    return ax


# ---------------------------------------------------------------------- imputation
def _dense(values) -> np.ndarray:
    if sparse.issparse(values):
        return np.asarray(values.toarray())
    return np.asarray(values)


def imputation_scatter(
    observed,
    imputed,
    hidden=None,
    max_points: int = 20_000,
    seed: int = 0,
    ax: Axes | None = None,
) -> Axes:
    """Observed against imputed values, with the Pearson correlation in the title.

    Judge imputation on entries the model did *not* see: hide some observed values (set them
    to zero or drop them from the input), impute, and pass the hidden positions as ``hidden``.

    Parameters
    ----------
    observed
        True values, any shape (cells x genes, dense or sparse), on the scale you want to judge,
        typically log-normalised expression.
    imputed
        Imputed values, same shape and scale.
    hidden
        Boolean mask of the same shape selecting the entries to judge (e.g. the ones hidden
        from the model). Default: every entry.
    max_points
        Draw at most this many points (a random subset); the correlation uses all entries.
    seed
        Seed of that random subset.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes.

    """
    observed = _dense(observed).astype(float)
    imputed = _dense(imputed).astype(float)
    if observed.shape != imputed.shape:
        raise ValueError(f"observed {observed.shape} and imputed {imputed.shape} must have the same shape")
    if hidden is not None:
        hidden = _dense(hidden).astype(bool)
        if hidden.shape != observed.shape:
            raise ValueError(f"hidden {hidden.shape} must have the shape of observed {observed.shape}")
        observed, imputed = observed[hidden], imputed[hidden]
    observed, imputed = observed.ravel(), imputed.ravel()
    if observed.size < 2:
        raise ValueError("need at least two entries to compare; is the `hidden` mask empty?")
    both_vary = observed.std() > 0 and imputed.std() > 0
    pearson = float(np.corrcoef(observed, imputed)[0, 1]) if both_vary else float("nan")

    ax = _new_axes(ax, (4.5, 4.5))
    shown = np.arange(observed.size)
    if observed.size > max_points:
        shown = np.random.default_rng(seed).choice(observed.size, max_points, replace=False)
    ax.scatter(
        observed[shown], imputed[shown], s=4, alpha=0.3, color=_TRAIN_COLOUR, linewidths=0, rasterized=True
    )
    low = float(min(observed.min(), imputed.min()))
    high = float(max(observed.max(), imputed.max()))
    ax.plot([low, high], [low, high], color="0.4", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlabel("observed")
    ax.set_ylabel("imputed")
    ax.set_title(f"Pearson r = {pearson:.3f} (n = {observed.size:,})")
    ax.legend(frameon=False, loc="upper left")
    _clean(ax)
    return ax


# ---------------------------------------------------------------------- annotation
def _obs_column(adata: AnnData, key: str, role: str) -> pd.Series:
    if key not in adata.obs:
        raise KeyError(
            f"adata.obs has no column {key!r} (the {role}); available columns: {list(adata.obs.columns)}. "
            "Run model.predict(...) first, or pass the right key."
        )
    return adata.obs[key]


def prediction_confidence(
    adata: AnnData,
    prediction_key: str = "schyena_prediction",
    confidence_key: str = "schyena_confidence",
    kind: str = "violin",
    ax: Axes | None = None,
) -> Axes:
    """Distribution of prediction confidence for each predicted cell type.

    Low confidence marks cells the classifier hesitated on: ambiguous, doublets, or types it
    was never shown. Tick labels give the number of cells predicted as each type.

    Parameters
    ----------
    adata
        AnnData with predictions in ``obs`` (as written by ``model.predict``).
    prediction_key
        ``obs`` column of predicted labels.
    confidence_key
        ``obs`` column of confidences (probability of the predicted label, 0 to 1).
    kind
        ``"violin"`` or ``"box"``.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes.

    """
    if kind not in ("violin", "box"):
        raise ValueError(f"kind must be 'violin' or 'box', got {kind!r}")
    predicted = _obs_column(adata, prediction_key, "predicted labels")
    confidence = _obs_column(adata, confidence_key, "prediction confidences")
    if not pd.api.types.is_numeric_dtype(confidence):
        raise TypeError(f"adata.obs[{confidence_key!r}] must be numeric, got dtype {confidence.dtype}")
    predicted = predicted.astype("category")
    types = [c for c in predicted.cat.categories if (predicted == c).any()]
    values = [confidence[predicted == c].to_numpy(dtype=float) for c in types]

    ax = _new_axes(ax, (max(4.0, 0.6 * len(types) + 1.5), 4))
    positions = np.arange(1, len(types) + 1)
    if kind == "violin":
        # A violin needs two distinct values; draw single-valued groups as points instead.
        spread = [i for i, v in enumerate(values) if np.unique(v).size > 1]
        if spread:
            parts = ax.violinplot(
                [values[i] for i in spread], positions=positions[spread], showmedians=True, widths=0.8
            )
            for body in parts["bodies"]:
                body.set_facecolor(_TRAIN_COLOUR)
                body.set_alpha(0.6)
        for i, v in enumerate(values):
            if i not in spread:
                ax.scatter(np.full(v.size, positions[i]), v, color=_TRAIN_COLOUR, s=10)
    else:
        ax.boxplot(values, positions=positions, widths=0.6)
    ax.set_xticks(positions)
    ax.set_xticklabels([f"{t} ({v.size})" for t, v in zip(types, values, strict=True)], rotation=90)
    ax.set_xlim(0.4, len(types) + 0.6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("predicted cell type (cells)")
    ax.set_ylabel("confidence")
    _clean(ax)
    return ax


def confusion_matrix(
    true,
    predicted,
    normalize: bool = True,
    annotate: bool = True,
    cmap: str = "Blues",
    ax: Axes | None = None,
) -> Axes:
    """Confusion matrix of true (rows) against predicted (columns) labels.

    Parameters
    ----------
    true
        True labels, one per cell (array, list or :class:`pandas.Series`; a categorical keeps
        its category order).
    predicted
        Predicted labels, same length.
    normalize
        Divide each row by its number of cells, so a row reads "of the cells of this type, the
        fraction predicted as each type"; the diagonal is then per-type recall.
    annotate
        Write the value in each cell of the matrix.
    cmap
        Matplotlib colour map.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes. The matrix itself is ``ax.images[0].get_array()``.

    """
    true = pd.Series(true).reset_index(drop=True)
    predicted = pd.Series(predicted).reset_index(drop=True)
    if len(true) != len(predicted):
        raise ValueError(
            f"true ({len(true)}) and predicted ({len(predicted)}) must have one label per cell each"
        )
    if len(true) == 0:
        raise ValueError("no labels given")

    def ordered_labels(series: pd.Series) -> list[str]:
        if isinstance(series.dtype, pd.CategoricalDtype):
            return [str(c) for c in series.cat.categories if (series == c).any()]
        return sorted(series.astype(str).unique())

    rows = ordered_labels(true)
    columns = rows + [c for c in ordered_labels(predicted) if c not in rows]
    counts = pd.crosstab(true.astype(str), predicted.astype(str)).reindex(
        index=rows, columns=columns, fill_value=0
    )
    matrix = counts.to_numpy(dtype=float)
    if normalize:
        matrix = matrix / matrix.sum(axis=1, keepdims=True)

    ax = _new_axes(ax, (0.45 * len(columns) + 2.5, 0.45 * len(rows) + 2))
    image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.figure.colorbar(
        image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true type" if normalize else "cells"
    )
    ax.set_xticks(np.arange(len(columns)))
    ax.set_xticklabels(columns, rotation=90)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float((true.astype(str) == predicted.astype(str)).mean())
    ax.set_title(f"accuracy {accuracy:.1%} ({len(true):,} cells)")
    if annotate:
        threshold = np.nanmax(matrix) / 2 if matrix.size else 0
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                value = matrix[i, j]
                if value == 0:
                    continue
                ax.text(
                    j,
                    i,
                    f"{value:.2f}" if normalize else f"{int(value)}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if value > threshold else "black",
                )
    return ax
