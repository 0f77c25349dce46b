"""Results written into the user's AnnData, under keys the user names (``key_added``).

The one place where a model call writes into ``adata``, and only when asked: scanpy's tools
write ``adata.obsm`` / ``.obs`` / ``.layers`` under ``key_added``; here the same, with two
rules checked *before* any work is done: an existing key is never overwritten unless
``overwrite=True``, and a result covers every cell (no ``indices``).
"""

from __future__ import annotations

from collections.abc import Sequence

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
