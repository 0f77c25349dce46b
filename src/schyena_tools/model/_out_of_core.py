"""Results larger than memory: a cells x genes matrix written to an h5ad file chunk by chunk.

``get_imputed_expression(out_file=...)`` hands its minibatches of rows to
:func:`write_rows_to_h5ad`, which writes it into a pre-allocated dense ``X`` dataset of a new
h5ad file (anndata's on-disk format, written with h5py and anndata's own element writer for
``obs`` and ``var``), so memory holds one chunk at a time. The file is first written under a
temporary name beside ``out_file`` and moved into place once complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData


def check_out_file(out_file, overwrite: bool, key_added, indices) -> None:
    """Before any work: ``out_file`` can be written and is not combined with other outputs."""
    path = Path(out_file)
    if path.suffix != ".h5ad":
        raise ValueError(f"out_file must end in .h5ad, got {str(path)!r}.")
    if not path.parent.is_dir():
        raise ValueError(f"the folder of out_file {str(path)!r} does not exist.")
    if path.exists() and not overwrite:
        raise ValueError(f"out_file {str(path)!r} exists already; pass overwrite=True to replace it.")
    if key_added is not None:
        raise ValueError("out_file and key_added both say where the result goes; pass one of them.")
    if indices is not None:
        raise ValueError(
            "out_file writes every cell of adata; subset the AnnData instead of passing indices."
        )


class ChunkedH5adWriter:
    """Rows of a float32 matrix appended to ``X`` of a new h5ad file, then opened backed.

    Parameters
    ----------
    out_file
        The h5ad file to write.
    adata
        The cells (its ``obs``, in order, is written; the rows must come in this order).
    columns
        The column names (written as ``var``; ``adata.var`` where they are ``adata``'s genes).

    """

    def __init__(self, out_file, adata: AnnData, columns: pd.Index):
        import h5py

        self.path = Path(out_file)
        self.partial = self.path.with_name(f".{self.path.name}.writing-{os.getpid()}")
        self.n_rows, self.n_cols = adata.n_obs, len(columns)
        self.file = h5py.File(self.partial, "w")
        self.file.attrs["encoding-type"] = "anndata"
        self.file.attrs["encoding-version"] = "0.1.0"
        rows = max(1, min(self.n_rows, 256))
        self.X = self.file.create_dataset(
            "X",
            shape=(self.n_rows, self.n_cols),
            dtype="float32",
            chunks=(rows, max(1, min(self.n_cols, 2048))),
        )
        self.X.attrs["encoding-type"] = "array"
        self.X.attrs["encoding-version"] = "0.2.0"
        self.obs = adata.obs[[]].copy()
        same_genes = len(columns) == adata.n_vars and columns.equals(adata.var_names)
        self.var = adata.var.copy() if same_genes else pd.DataFrame(index=pd.Index(columns, dtype=str))
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        """Write the next ``rows`` (cells in order)."""
        self.X[self.written : self.written + rows.shape[0]] = rows
        self.written += rows.shape[0]

    def close(self) -> AnnData:
        """Finish the file, move it into place and return it opened file-backed (read-only)."""
        import anndata
        from anndata.io import write_elem

        if self.written != self.n_rows:
            self.abort()
            raise RuntimeError(f"wrote {self.written} of {self.n_rows} rows; the file was removed.")
        for key, frame in (("obs", self.obs), ("var", self.var)):
            write_elem(self.file, key, frame)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(self.file, key, {})
        self.file.close()
        os.replace(self.partial, self.path)
        return anndata.read_h5ad(self.path, backed="r")

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        self.file.close()
        self.partial.unlink(missing_ok=True)


def write_rows_to_h5ad(out_file, adata: AnnData, columns: pd.Index, chunks) -> AnnData:
    """Write the row ``chunks`` (arrays, cells in order) as ``X`` of ``out_file``; open it backed.

    An error on the way (in the model or the disk) leaves no file behind.
    """
    writer = ChunkedH5adWriter(out_file, adata, columns)
    try:
        for rows in chunks:
            writer.append(rows)
    except BaseException:
        writer.abort()
        raise
    return writer.close()
