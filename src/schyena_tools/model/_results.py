"""Results written into the user's AnnData, under keys the user names (``key_added``).

The one place where a model call writes into ``adata``, and only when asked: scanpy's tools
write ``adata.obsm`` / ``.obs`` / ``.layers`` under ``key_added``; here the same, with two
rules checked *before* any work is done: an existing key is never overwritten unless
``overwrite=True``, and a result covers every cell (no ``indices``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from anndata import AnnData

SLOTS = ("obsm", "obs", "layers")


def check_keys_free(
    adata: AnnData, slot: str, keys: Sequence[str], overwrite: bool, indices: Sequence[int] | None
) -> None:
    """Raise before any work if results cannot go to ``adata.<slot>[key]`` for each key."""
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")
    if indices is not None:
        raise ValueError(
            "key_added writes one value per cell of adata, so it cannot be combined with indices; "
            "subset the AnnData instead (adata[indices].copy()) or take the returned array."
        )
    for key in keys:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key_added must be a non-empty string, got {key!r}")
        if key in getattr(adata, slot) and not overwrite:
            raise ValueError(
                f"adata.{slot}[{key!r}] exists already; pass overwrite=True to replace it, or "
                f"another key_added."
            )


def store(adata: AnnData, slot: str, key: str, value) -> None:
    """``adata.<slot>[key] = value`` (after :func:`check_keys_free`)."""
    getattr(adata, slot)[key] = value


def fill_rows(chunks: Iterable[np.ndarray], n_rows: int, n_cols: int, dtype=np.float32) -> np.ndarray:
    """The minibatch results ``chunks`` (rows in order) copied into one preallocated array.

    Collecting small per-minibatch arrays in a list and concatenating them at the end keeps
    thousands of small allocations alive while each minibatch's large temporaries come and go,
    which fragments the C heap: embedding 200,000 file-backed cells grew the process's resident
    memory by about 1 GB that way (``benchmarks/large_data.py``), where one preallocated array
    keeps it flat.
    """
    result = np.empty((n_rows, n_cols), dtype=dtype)
    filled = 0
    for chunk in chunks:
        result[filled : filled + chunk.shape[0]] = chunk
        filled += chunk.shape[0]
    if filled != n_rows:
        raise RuntimeError(f"expected {n_rows} rows of results, got {filled}")
    return result
