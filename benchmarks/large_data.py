"""Embedding, prediction and imputation of file-backed AnnData: time and peak memory vs cells.

One command::

    python benchmarks/large_data.py                      # 10k, 50k and 200k cells

Corpora are made from real cells: Zeisel 2015's 3,005 cells (MIT, bundled) on their 1,000 most
variable genes (``--genes``), resampled with replacement and binomially thinned (each cell keeps a random
50-100% of its counts, so no two rows are the same), written as h5ad files (CSR) of 10,000 to
200,000 cells. A small scHyena (d_model 8, 1 block, ``--d-model``; the per-cell cost scales
with the model and the genes, the memory behaviour does not) is pre-trained for one epoch on
the 3,005 cells and given a linear-probe classifier of the 7 major classes. Then, for every
corpus, a fresh process opens the file backed (``read_h5ad(path, backed="r")``), loads the
model onto it and times
``get_latent_representation``, ``predict`` and ``get_imputed_expression(out_file=...)``
(written chunk by chunk to another h5ad), recording the process's peak resident memory
(``VmHWM``) after each call. Memory should stay flat and time grow linearly as the corpus grows
20x. Writes ``docs/benchmarks/large_data.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks"
BATCH_SIZE = 256


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(model_dir: str, data_file: str, out_file: str) -> dict:
    """One corpus in this process: open backed, load, embed, predict, impute to a file."""
    import warnings

    import anndata as ad

    import schyena_tools as st

    warnings.simplefilter("ignore")
    row = {"rss_start_mb": _rss_mb("VmRSS")}
    backed = ad.read_h5ad(data_file, backed="r")
    model = st.SCHyena.load(model_dir, adata=backed, accelerator="cpu")
    row.update(cells=backed.n_obs, genes=backed.n_vars, rss_loaded_mb=_rss_mb("VmRSS"))
    for name, call in (
        ("embed", lambda: model.get_latent_representation(batch_size=BATCH_SIZE, progress_bar=False)),
        ("predict", lambda: model.predict(batch_size=BATCH_SIZE, progress_bar=False)),
        (
            "impute_to_file",
            lambda: model.get_imputed_expression(
                batch_size=BATCH_SIZE, out_file=out_file, overwrite=True, progress_bar=False
            ).file.close(),
        ),
    ):
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        row[f"{name}_s"] = round(seconds, 1)
        row[f"{name}_cells_per_s"] = round(backed.n_obs / seconds, 1)
        row[f"{name}_peak_rss_mb"] = round(_rss_mb("VmHWM"), 1)
    row["input_file_mb"] = round(os.path.getsize(data_file) / 1e6, 1)
    row["imputed_file_mb"] = round(os.path.getsize(out_file) / 1e6, 1)
    return row


def make_corpus(source, n_cells: int, path: Path, seed: int) -> None:
    """``n_cells`` resampled, thinned real cells written as a CSR h5ad (built in chunks)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(source.X).astype(np.int64)
    labels = source.obs["cell_type"].astype(str).to_numpy()
    blocks, picked = [], []
    for start in range(0, n_cells, 20_000):
        rows = rng.integers(0, counts.shape[0], min(20_000, n_cells - start))
        block = counts[rows].tocsr()
        keep = rng.uniform(0.5, 1.0, size=rows.size).repeat(np.diff(block.indptr))
        block.data = rng.binomial(block.data, keep)
        block.eliminate_zeros()
        blocks.append(block.astype(np.float32))
        picked.append(rows)
    rows = np.concatenate(picked)
    adata = ad.AnnData(sp.vstack(blocks).tocsr(), var=source.var[[]].copy())
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.obs["cell_type"] = pd.Categorical(labels[rows])
    adata.write_h5ad(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="10000,50000,200000", help="comma-separated corpus sizes")
    parser.add_argument("--workdir", default=None, help="where the corpora are written (default: a temp dir)")
    parser.add_argument("--genes", type=int, default=1000, help="most variable genes kept (default 1000)")
    parser.add_argument("--d-model", type=int, default=8, help="width of the small model (default 8)")
    parser.add_argument("--tag", default="large_data")
    args = parser.parse_args()
    sizes = [int(n) for n in args.cells.split(",")]

    import warnings

    import scvi

    sys.path.insert(0, str(HERE))
    import downstream

    import schyena_tools as st

    warnings.simplefilter("ignore")
    scvi.settings.seed = 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="schyena_large_"))
    workdir.mkdir(parents=True, exist_ok=True)
    zeisel = st.datasets.zeisel_brain()
    zeisel = zeisel[:, downstream.top_hvgs(zeisel, args.genes)].copy()
    setup = zeisel.copy()
    st.SCHyena.setup_anndata(setup, labels_key="cell_type")
    model = st.SCHyena(setup, d_model=args.d_model, n_layers=1)
    model.train(max_epochs=1, batch_size=32, train_size=1.0, enable_progress_bar=False)
    model.train_classifier(enable_progress_bar=False)
    model.save(workdir / "model", overwrite=True)

    rows = []
    for n_cells in sizes:
        data_file = workdir / f"cells_{n_cells}.h5ad"
        start = time.perf_counter()
        make_corpus(zeisel, n_cells, data_file, seed=n_cells)
        print(f"{n_cells} cells written in {time.perf_counter() - start:.0f} s", flush=True)
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import large_data; "
            "print('RESULT', json.dumps(large_data.worker(*sys.argv[2:])))"
        )
        out_file = workdir / f"imputed_{n_cells}.h5ad"
        done = subprocess.run(
            [sys.executable, "-c", code, str(HERE), str(workdir / "model"), str(data_file), str(out_file)],
            capture_output=True,
            text=True,
        )
        result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not result:
            raise RuntimeError(f"worker for {n_cells} cells failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(result[0][len("RESULT ") :]))
        print(rows[-1], flush=True)
        data_file.unlink()
        out_file.unlink()

    meta = dict(
        genes=args.genes,
        model=f"d_model {args.d_model}, 1 block, linear-probe classifier (7 classes)",
        batch_size=BATCH_SIZE,
        threads=os.cpu_count(),
        created=time.strftime("%Y-%m-%d %H:%M"),
    )
    (DOCS / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "| cells | input h5ad MB | RSS loaded MB | embed s | embed cells/s | predict s | "
        "impute to file s | peak RSS after embed / predict / impute MB | imputed file MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']:,} | {r['input_file_mb']:,} | {r['rss_loaded_mb']:.0f} | {r['embed_s']} | "
            f"{r['embed_cells_per_s']} | {r['predict_s']} | {r['impute_to_file_s']} | "
            f"{r['embed_peak_rss_mb']:.0f} / {r['predict_peak_rss_mb']:.0f} / "
            f"{r['impute_to_file_peak_rss_mb']:.0f} | {r['imputed_file_mb']:,} |"
        )
    (DOCS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
