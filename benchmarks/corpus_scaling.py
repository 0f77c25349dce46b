"""Corpus pre-training as the corpus grows 100x: throughput, peak memory, time to the first minibatch.

One command from a checkout with ``../shared/data`` beside it (``SCHYENA_DATA`` overrides)::

    python benchmarks/corpus_scaling.py        # 10k, 100k, 1M cells; ~30 min, ~6 GB in --workdir

The corpus is made of real cells: files of 10,000 cells each, every file resampled (with
replacement) from one of the five full-length brain sets that may be shipped (Zeisel 550, La
Manno, Campbell, BICAN caudate, Hochgerner; cycling), each cell binomially thinned to a random
5-25% of its counts so that no two cells are alike and the files stay small (~1,000 genes
detected per cell, like droplet data). A corpus of ``n`` cells is the first ``n / 10,000`` files,
read through :class:`schyena_tools.dataloaders.CorpusDataModule` (vocabulary: genes measured in at
least 2 of the 5 source panels, matched ignoring case: 20,149 genes).

For each size, in a fresh process (so peak memory is that size's alone):

* ``loader``: the data module alone, the time from building it (every file checked) to the
  first minibatch, then minibatches of 16 cells per second over ``--loader-batches``;
* ``train``: ``SCHyena.from_corpus`` with the default network, ``model.train`` for
  ``--steps`` optimiser steps: time to the first step (checks, the data-dependent start on
  20,000 cells, Lightning's set-up) and cells per second over the steps after the first two.

Peak resident memory is the process's ``VmHWM``; "growth" subtracts the resident memory
after the imports. Files are read through the page cache (just written); the figures are ratios
across sizes measured side by side in one run, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCHYENA_DATA", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs" / "benchmarks"
SOURCES = (
    "zeisel2015_gpsFISH/zeisel_550x19972_counts.h5ad",
    "lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad",
    "campbell2017_sctk/campbell2017_sctk.h5ad",
    "bican_human_caudate_dropsift/bican_human_caudate_dropsift.h5ad",
    "hochgerner2018_dg_scvelo100/hochgerner2018_dg_scvelo100.h5ad",
)
CORPUS_SETTINGS = dict(case_insensitive=True, batch_size=16)


def vocabulary() -> list[str]:
    """The same vocabulary for every size: genes of at least 2 of the 5 source panels."""
    import anndata as ad

    from schyena_tools.dataloaders import corpus_vocabulary

    panels = [ad.read_h5ad(DATA / file, backed="r").var_names for file in SOURCES]
    return corpus_vocabulary(panels, min_datasets=2, case_insensitive=True).tolist()


def rss_mb() -> float:
    """Resident memory now (Linux ``/proc``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``; ``ru_maxrss`` would count the parent's,
    which it inherits across ``fork`` + ``exec``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    raise RuntimeError("no VmHWM in /proc/self/status")


def make_files(workdir: Path, n_files: int, cells_per_file: int, seed: int = 0) -> list[Path]:
    """The corpus files (kept between runs: a file already there is reused)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    workdir.mkdir(parents=True, exist_ok=True)
    sources = None
    paths = []
    for i in range(n_files):
        path = workdir / f"cells_{i:03d}.h5ad"
        paths.append(path)
        if path.exists():
            continue
        if sources is None:
            sources = [ad.read_h5ad(DATA / file) for file in SOURCES]
        source = sources[i % len(sources)]
        rng = np.random.default_rng([seed, i])
        counts = sp.csr_matrix(source.X)[rng.integers(0, source.n_obs, cells_per_file)]
        keep = rng.uniform(0.05, 0.25, cells_per_file)
        per_value = np.repeat(keep, np.diff(counts.indptr))
        counts.data = rng.binomial(counts.data.astype(np.int64), per_value).clip(0, 65535).astype(np.uint16)
        counts.eliminate_zeros()
        obs = pd.DataFrame(index=[f"file{i:03d}_cell{j:05d}" for j in range(cells_per_file)])
        partial = path.with_suffix(".partial")
        ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=source.var_names)).write_h5ad(partial)
        os.replace(partial, path)
    return paths


# ---------------------------------------------------------------------- workers
def loader_worker(paths: list[Path], n_batches: int) -> dict:
    from schyena_tools.dataloaders import CorpusDataModule

    base = rss_mb()
    start = time.perf_counter()
    corpus = CorpusDataModule(paths, vocabulary=vocabulary(), **CORPUS_SETTINGS)
    built = time.perf_counter()
    batches = iter(corpus.train_dataloader())
    next(batches)
    first = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    done = time.perf_counter()
    return {
        "cells": corpus.n_obs,
        "files": len(paths),
        "vocabulary": corpus.n_vars,
        "build_s": round(built - start, 2),
        "first_batch_s": round(first - start, 2),
        "cells_per_s": round(16 * n_batches / (done - first), 1),
        "rss_after_imports_mb": round(base, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def train_worker(paths: list[Path], steps: int) -> dict:
    import scvi
    from lightning.pytorch.callbacks import Callback

    import schyena_tools as st

    class StepTimes(Callback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    scvi.settings.seed = 0
    base = rss_mb()
    start = time.perf_counter()
    corpus = st.dataloaders.CorpusDataModule(paths, vocabulary=vocabulary(), **CORPUS_SETTINGS)
    model = st.SCHyena.from_corpus(corpus)
    times = StepTimes()
    model.train(
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        enable_progress_bar=False,
        accelerator="cpu",
        callbacks=[times],
    )
    measured = times.ends[-1] - times.ends[1]
    return {
        "cells": corpus.n_obs,
        "files": len(paths),
        "first_step_s": round(times.starts[0] - start, 2),
        "cells_per_s": round(16 * (len(times.ends) - 2) / measured, 2),
        "s_per_step": round(measured / (len(times.ends) - 2), 2),
        "rss_after_imports_mb": round(base, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_worker(kind: str, paths: list[Path], amount: int, threads: int) -> dict:
    """One measurement in a fresh process."""
    command = [sys.executable, __file__, "--worker", kind, "--amount", str(amount), "--threads", str(threads)]
    result = subprocess.run(
        [*command, *map(str, paths)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- report
def write_report(rows: list[dict], settings: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out.with_suffix(".json")).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    loader = [r for r in rows if r["kind"] == "loader"]
    train = [r for r in rows if r["kind"] == "train"]
    lines = [
        "| cells | files | loader: first minibatch (s) | loader: cells/s | loader: peak RSS MB (growth) "
        "| training: first step (s) | training: cells/s | training: peak RSS MB (growth) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_cells = {r["cells"]: r for r in train}
    for r in loader:
        t = by_cells.get(r["cells"], {})

        def growth(row):
            return f"{row['peak_rss_mb']:,.0f} ({row['peak_rss_mb'] - row['rss_after_imports_mb']:+,.0f})"

        lines.append(
            f"| {r['cells']:,} | {r['files']} | {r['first_batch_s']} | {r['cells_per_s']:,.0f} "
            f"| {growth(r)} | "
            + (f"{t['first_step_s']} | {t['cells_per_s']} | {growth(t)} |" if t else "- | - | - |")
        )
    if len(loader) > 1:
        lo, hi = loader[0], loader[-1]
        lines += [
            "",
            f"Largest / smallest corpus ({hi['cells'] // lo['cells']}x the cells): loader throughput "
            f"{hi['cells_per_s'] / lo['cells_per_s']:.2f}x, loader peak memory "
            f"{hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}x"
            + (
                f", training throughput {train[-1]['cells_per_s'] / train[0]['cells_per_s']:.2f}x, "
                f"training peak memory {train[-1]['peak_rss_mb'] / train[0]['peak_rss_mb']:.2f}x."
                if len(train) > 1
                else "."
            ),
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for kind, marker in (("loader", "o"), ("train", "s")):
        part = [r for r in rows if r["kind"] == kind]
        if not part:
            continue
        cells = [r["cells"] for r in part]
        axes[0].plot(cells, [r["cells_per_s"] for r in part], marker=marker, label=kind)
        axes[1].plot(cells, [r["peak_rss_mb"] for r in part], marker=marker, label=kind)
    for axis, label in zip(axes, ("cells / s", "peak resident memory (MB)"), strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("cells in the corpus")
        axis.set_ylabel(label)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cells-per-file", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/schyena_corpus_bench"))
    parser.add_argument("--steps", type=int, default=4, help="training steps per size")
    parser.add_argument("--loader-batches", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=["loader", "train"])
    parser.add_argument("--out", type=Path, default=DOCS / "corpus_scaling_results")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--amount", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        import torch

        torch.set_num_threads(args.threads)
        work = {"loader": loader_worker, "train": train_worker}[args.worker]
        print(json.dumps(work(args.paths, args.amount)))
        return
    started = time.perf_counter()
    paths = make_files(args.workdir, max(args.sizes) // args.cells_per_file, args.cells_per_file)
    made = time.perf_counter() - started
    disk = sum(p.stat().st_size for p in paths) / 1e9
    print(f"{len(paths)} files, {disk:.1f} GB, ready in {made:.0f} s", flush=True)
    rows = []
    for kind in args.kinds:
        for size in args.sizes:
            amount = args.loader_batches if kind == "loader" else args.steps
            row = {
                "kind": kind,
                **run_worker(kind, paths[: size // args.cells_per_file], amount, args.threads),
            }
            print(row, flush=True)
            rows.append(row)
    settings = {
        "sizes": args.sizes,
        "cells_per_file": args.cells_per_file,
        "steps": args.steps,
        "loader_batches": args.loader_batches,
        "threads": args.threads,
        "corpus": CORPUS_SETTINGS,
        "disk_gb": round(disk, 2),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    write_report(rows, settings, args.out)
    print((args.out.with_suffix(".md")).read_text())


if __name__ == "__main__":
    main()
