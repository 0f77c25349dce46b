"""Checks on the user's AnnData, run before any work, with errors that name the problem and the fix.

scHyena normalises raw counts itself (library size, then ``log1p``), so the most harmful input
is a matrix that was already normalised, logged or scaled: the model would train and embed
without complaint and give meaningless results. These checks catch that, and the other inputs
that would fail later with an obscure message (NaN, duplicate gene names, empty data, missing
keys).

They are cheap on large data: sparse matrices are checked on their stored values only, in
chunks (no dense copy, bounded temporary memory); file-backed matrices are checked on an evenly
spaced sample of rows, never read whole.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

#: Stored values examined per step, so that temporary arrays stay around 32 MiB whatever the data.
CHUNK_VALUES = 1 << 22
#: Rows read from a file-backed matrix to check it (the whole matrix is never loaded).
BACKED_SAMPLE_ROWS = 1000
#: Rows examined to recognise normalised / log-normalised values (see :func:`_normalisation_kind`).
PATTERN_SAMPLE_ROWS = 200
#: A row needs this many distinct non-zero values before its values can betray a normalisation.
PATTERN_MIN_DISTINCT = 4


class MissingKeyError(KeyError):
    """A key the user named (layer, ``obs`` column) is not in the AnnData."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


class CountsWarning(UserWarning):
    """The counts are usable but unusual (fractional counts, empty cells)."""


@dataclass
class CountsSummary:
    """What :func:`check_counts` found in a counts matrix."""

    n_cells_checked: int
    sampled: bool
    n_stored: int
    n_nonfinite: int
    n_negative: int
    min_value: float
    n_noninteger: int
    n_empty_cells: int


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _is_backed(matrix) -> bool:
    """True for matrices read from disk on demand (h5py datasets, anndata's backed sparse)."""
    module = type(matrix).__module__
    return module.startswith("h5py") or "sparse_dataset" in module or module.startswith("zarr")


def _sample_rows(n_rows: int, n_sample: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_rows - 1, num=min(n_rows, n_sample)).astype(np.int64))


def _to_memory(block):
    """A block of rows as a scipy CSR matrix or a numpy array."""
    if sp.issparse(block):
        return sp.csr_matrix(block)
    if hasattr(block, "compute"):  # dask
        block = block.compute()
    return np.asarray(block)


def _row_blocks(matrix):
    """Yield ``(stored values, per-row sums)`` in blocks of bounded size."""
    n_rows, n_cols = matrix.shape
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix) if matrix.format != "csr" else matrix
        rows_per_block = max(1, CHUNK_VALUES * n_rows // max(matrix.nnz, 1))
    else:
        rows_per_block = max(1, CHUNK_VALUES // max(n_cols, 1))
    for start in range(0, n_rows, rows_per_block):
        block = matrix[start : start + rows_per_block]
        if sp.issparse(block):
            values = block.data
            # Sum of stored values per row without a dense copy; NaN propagates, which is fine
            # because NaN is reported as an error before empty cells are looked at.
            row_sums = np.add.reduceat(values, block.indptr[:-1]) if values.size else np.zeros(block.shape[0])
            row_sums = np.where(np.diff(block.indptr) > 0, row_sums, 0.0)
        else:
            block = np.asarray(block)
            values = block.ravel()
            row_sums = block.sum(axis=1)
        yield values, row_sums


def _rows_as_lists(matrix, rows: np.ndarray) -> list[np.ndarray]:
    """Non-zero values of the given rows (used to recognise normalisation patterns)."""
    block = _to_memory(matrix[rows])
    if sp.issparse(block):
        return [block.data[block.indptr[i] : block.indptr[i + 1]] for i in range(block.shape[0])]
    return [row[row != 0] for row in block]


def _is_integer_multiple_pattern(values: np.ndarray) -> bool | None:
    """Whether the non-zero values of one cell are integer multiples of its smallest value.

    Raw counts ``c`` scaled by the cell's library size give ``c * s``: every value is an integer
    multiple of the smallest one (a count of 1, in all but the deepest cells). Fractional counts
    from pseudo-alignment (EM estimates) are not. None when the row has too few distinct values
    to tell.
    """
    values = np.unique(values[values > 0].astype(np.float64))
    if values.size < PATTERN_MIN_DISTINCT:
        return None
    if not np.isfinite(values[-1]):  # expm1 overflowed: these were never log values
        return False
    ratios = values / values[0]
    return bool(np.all(np.abs(ratios - np.round(ratios)) < 1e-3 * np.maximum(ratios, 1.0)))


def _normalisation_kind(matrix, n_rows: int) -> str | None:
    """Return "log1p" or "scaled" if sampled rows look like normalised counts, else None."""
    rows = _rows_as_lists(matrix, _sample_rows(n_rows, PATTERN_SAMPLE_ROWS))
    for name, transform in (("log1p", np.expm1), ("scaled", lambda v: v)):
        with np.errstate(over="ignore", invalid="ignore"):
            verdicts = [_is_integer_multiple_pattern(transform(row.astype(np.float64))) for row in rows]
        decided = [v for v in verdicts if v is not None]
        if decided and np.mean(decided) >= 0.9:
            return name
    return None


def _setup_call(layer: str) -> str:
    """How the Python API registers ``layer``: the default wording of every layer hint."""
    return f"setup_anndata(adata, layer={layer!r})"


def _raw_counts_hint(adata: AnnData, layer_fix=_setup_call) -> str | None:
    """The one line that registers counts kept in ``adata.raw`` (scanpy's layout), if they are."""
    raw = adata.raw
    if raw is None or not adata.var_names.isin(raw.var_names).all():
        return None
    sample = raw[: min(raw.n_obs, 50), adata.var_names[: min(adata.n_vars, 2000)]].X
    values = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    if values.size == 0 or values.min() < 0 or not np.allclose(values, np.round(values)):
        return None
    return (
        "adata.raw holds raw counts for these genes: copy them into a layer and register it, "
        "adata.layers['counts'] = adata.raw[:, adata.var_names].X; "
        f"{layer_fix('counts')}."
    )


def _layer_hint(adata: AnnData, layer_fix=_setup_call) -> str:
    """How to point scHyena at the raw counts; ``layer_fix(name)`` words the fix for the caller."""
    from_raw = _raw_counts_hint(adata, layer_fix)
    if from_raw:
        return from_raw
    layers = list(adata.layers.keys())
    if layers:
        return f"Layers present: {layers}; use the one with raw counts, e.g. {layer_fix(layers[0])}."
    return (
        "No layers are present: reload the raw counts (e.g. from adata.raw or the original file) "
        f"into adata.layers['counts'] and use {layer_fix('counts')}."
    )


def check_counts(adata: AnnData, layer: str | None = None, layer_fix=None) -> CountsSummary:
    """Check that ``adata.X`` (or ``adata.layers[layer]``) holds raw counts.

    ``layer_fix(name)`` words how the caller registers layer ``name`` in the errors (default:
    ``setup_anndata(adata, layer=name)``; the command line says ``--layer name``).

    Errors (:class:`ValueError`), raised before anything is registered:

    - NaN or infinite values;
    - negative values (scaled / z-scored data);
    - values that are library-size normalised (``sc.pp.normalize_total``), with or without
      ``log1p``: recognised because, in each cell, the values (after ``expm1`` for logged data)
      are integer multiples of the smallest one.

    Accepted with a :class:`CountsWarning`:

    - other non-integer, non-negative values: fractional counts as written by pseudo-alignment
      tools (kallisto, salmon, alevin-fry EM estimates) are legitimate input;
    - cells with no counts at all: they are kept (their embedding carries no information).

    Sparse matrices are checked on their stored values in chunks of :data:`CHUNK_VALUES`
    (no dense copy). File-backed matrices (``read_h5ad(..., backed="r")``) are checked on
    :data:`BACKED_SAMPLE_ROWS` evenly spaced rows only, so bad values elsewhere can go unseen.

    Returns
    -------
    What was found, for tests and diagnostics.

    """
    where = _where(layer)
    layer_fix = layer_fix or _setup_call
    matrix = get_counts_matrix(adata, layer)
    n_rows = matrix.shape[0]
    sampled = _is_backed(matrix) and n_rows > BACKED_SAMPLE_ROWS
    checked = _to_memory(matrix[_sample_rows(n_rows, BACKED_SAMPLE_ROWS)]) if sampled else matrix
    if _is_backed(checked):  # a small backed matrix: read it whole
        checked = _to_memory(checked[:])

    integer_dtype = np.issubdtype(checked.dtype, np.integer) or checked.dtype == bool
    n_stored = n_nonfinite = n_negative = n_noninteger = n_empty = 0
    min_value = np.inf
    for values, row_sums in _row_blocks(checked):
        n_stored += values.size
        if values.size:
            min_value = min(min_value, float(np.nanmin(values)) if not integer_dtype else float(values.min()))
        if not integer_dtype:
            finite = np.isfinite(values)
            n_nonfinite += int(values.size - np.count_nonzero(finite))
            # on non-finite entries the comparisons below are false, so they are not double counted
            with np.errstate(invalid="ignore"):
                n_noninteger += int(np.count_nonzero(finite & (values != np.floor(values))))
        n_negative += int(np.count_nonzero(values < 0))
        n_empty += int(np.count_nonzero(row_sums == 0))

    summary = CountsSummary(
        n_cells_checked=checked.shape[0],
        sampled=sampled,
        n_stored=n_stored,
        n_nonfinite=n_nonfinite,
        n_negative=n_negative,
        min_value=min_value,
        n_noninteger=n_noninteger,
        n_empty_cells=n_empty,
    )
    scope = f" (in {checked.shape[0]} evenly spaced cells of a file-backed matrix)" if sampled else ""
    if n_nonfinite:
        raise ValueError(
            f"{where} holds {n_nonfinite} NaN or infinite values{scope}. scHyena needs raw counts. "
            f"Register the layer with raw counts, or fix the values (e.g. X = np.nan_to_num(X)) "
            f"before setup_anndata. {_layer_hint(adata, layer_fix)}"
        )
    if n_negative:
        raise ValueError(
            f"{where} holds {n_negative} negative values (minimum {min_value:.3g}){scope}: it looks "
            f"scaled or batch-corrected, not raw counts. scHyena normalises raw counts itself. "
            f"{_layer_hint(adata, layer_fix)}"
        )
    if n_noninteger:
        kind = _normalisation_kind(checked, checked.shape[0])
        if kind == "log1p":
            raise ValueError(
                f"{where} looks log-transformed (sc.pp.log1p, usually after sc.pp.normalize_total): "
                f"in each cell, expm1 of the values are multiples of one library-size factor. scHyena "
                f"normalises and logs raw counts itself, so it needs the raw counts. "
                f"{_layer_hint(adata, layer_fix)}"
            )
        if kind == "scaled":
            raise ValueError(
                f"{where} looks library-size normalised (sc.pp.normalize_total): in each cell the "
                f"values are multiples of one scale factor. scHyena normalises raw counts itself, "
                f"so it needs the raw counts. {_layer_hint(adata, layer_fix)}"
            )
        warnings.warn(
            f"{where} holds {n_noninteger} non-integer values{scope}. They are accepted as "
            f"fractional counts (as written by pseudo-alignment tools such as kallisto, salmon or "
            f"alevin-fry). If they are normalised values instead, register the raw counts layer.",
            CountsWarning,
            stacklevel=3,
        )
    if n_empty:
        warnings.warn(
            f"{n_empty} cells of {where} have no counts at all{scope}. They are kept, but their "
            f"embedding carries no information. Remove them first with "
            f"sc.pp.filter_cells(adata, min_counts=1) (on a copy if you need the original).",
            CountsWarning,
            stacklevel=3,
        )
    return summary


def get_counts_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]``, with a clear error when it is absent."""
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "adata.X is empty (None). Put the raw counts in adata.X, or name the layer that "
                "holds them: setup_anndata(adata, layer='counts')."
            )
        return adata.X
    if layer not in adata.layers:
        raise MissingKeyError(
            f"layer={layer!r} is not in adata.layers (present: {list(adata.layers.keys())}). "
            f"Pass the name of the layer with raw counts, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def check_obs_key(adata: AnnData, key: str | None, argument: str) -> None:
    """The ``obs`` column named by ``argument`` exists and has no missing values."""
    if key is None:
        return
    if key not in adata.obs.columns:
        raise MissingKeyError(
            f"{argument}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}). "
            f"Pass an existing column, or {argument}=None."
        )
    missing = int(adata.obs[key].isna().sum())
    if missing:
        hint = (
            "mark unlabelled cells with the unlabeled_category instead, e.g. "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).replace('nan', 'Unknown')"
            if argument == "labels_key"
            else f"fill them, e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)"
        )
        raise ValueError(f"adata.obs[{key!r}] ({argument}) has {missing} missing values (NaN): {hint}.")
    if argument == "labels_key":
        check_labels_are_text(adata, key)


def check_labels_are_text(adata: AnnData, key: str) -> None:
    """Cell-type labels are strings (or a categorical of strings), not numbers.

    Labels are matched to the ``unlabeled_category`` and to a saved model's classes as text;
    integer cluster ids (as read from a CSV) would otherwise fail inside scvi-tools with a
    message about categories the user never set.
    """
    column = adata.obs[key]
    values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column
    if not pd.api.types.is_object_dtype(values) and not pd.api.types.is_string_dtype(values):
        raise ValueError(
            f"adata.obs[{key!r}] (labels_key) holds {values.dtype} values, not text labels; scHyena "
            f"matches labels (and the unlabeled_category) as strings. Convert the column first: "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)"
        )
    mixed = [v for v in pd.unique(values) if not isinstance(v, str)]
    if mixed:
        raise ValueError(
            f"adata.obs[{key!r}] (labels_key) mixes text with non-text values (e.g. {mixed[:3]!r}); "
            f"convert the column first: adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)"
        )


def check_anndata(
    adata: AnnData,
    layer: str | None = None,
    labels_key: str | None = None,
    batch_key: str | None = None,
    layer_fix=None,
) -> CountsSummary:
    """All checks on an AnnData before it is registered or used by a model.

    Raises on an empty AnnData, duplicate gene names, a missing ``layer`` / ``obs`` column, and
    on counts that are not raw counts (see :func:`check_counts`; ``layer_fix`` as there).
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes). Check the filtering "
            f"or subsetting that produced it."
        )
    duplicated = adata.var_names[adata.var_names.duplicated()]
    if len(duplicated):
        raise ValueError(
            f"{len(duplicated)} gene names occur more than once in adata.var_names (e.g. "
            f"{list(pd.unique(duplicated))[:5]}). scHyena matches genes to its vocabulary by name, "
            f"so names must be unique: call adata.var_names_make_unique() (or aggregate the "
            f"duplicates) first."
        )
    get_counts_matrix(adata, layer)
    check_obs_key(adata, labels_key, "labels_key")
    check_obs_key(adata, batch_key, "batch_key")
    return check_counts(adata, layer, layer_fix)


def check_batch_size(batch_size: int | None, argument: str = "batch_size") -> None:
    """A minibatch size is a positive integer (or None for the default)."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{argument} must be a positive integer (cells per minibatch), got {batch_size!r}.")


def check_number(
    value,
    argument: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    meaning: str = "",
) -> None:
    """A hyper-parameter is a (finite) number in its range, else a ``ValueError`` naming it.

    Checked before any work, so that ``lr=-1`` or ``d_model=0`` is not reported by another
    library, later, in its own words.
    """
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not np.isfinite(value):
        raise ValueError(f"{argument} must be {kind}{meaning}, got {value!r}.")
    low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    high = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
    if not (low or high):
        return
    if minimum is not None and maximum is not None:
        opening, closing = "(" if exclusive_minimum else "[", ")" if exclusive_maximum else "]"
        bounds = f"in {opening}{minimum:g}, {maximum:g}{closing}"
    elif minimum is not None:
        bounds = f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    else:
        bounds = f"{'<' if exclusive_maximum else '<='} {maximum:g}"
    raise ValueError(f"{argument} must be {bounds}{meaning}, got {value!r}.")
