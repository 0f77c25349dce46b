"""Doublet detection: scHyena's detector against scrublet and SOLO on the same cells.

Protocol (``docs/benchmarks/doublets.md``):

- **Held-out artificial doublets.** To each dataset's real cells, 10% artificial doublets are
  added (the summed counts of two random real cells, drawn with a seed no detector uses). Every
  method then runs on that input as a user would run it, making its own artificial doublets
  from the input: ``sc.pp.scrublet`` (scanpy), scvi-tools' ``SOLO`` (defaults) on an scVI model trained
  on the input for 100 epochs, and ``SCHyena.train_doublet_detector`` (defaults) on the bundled
  pre-trained model mapped onto the input. Scores of the held-out doublets against the real
  cells: AUROC and average precision.
- **Darmanis 2015 "hybrid" cells**: the authors' own doublet call (46 of 466 cells), on the
  data as it is.
- A reference row, **depth alone** (total counts as the score): the part of the signal that is
  just "two cells have more counts than one".

Datasets: Zeisel 2015 (1,000 of the 2,455 cells the bundled model never saw), Campbell 2017
hypothalamus, scCB2 E18 brain, Darmanis 2015 human cortex (genes matched case-insensitively).
La Manno and the other 550 Zeisel cells are left out: the bundled model was pre-trained on them.

Run: ``python benchmarks/doublets.py`` (about 30 min on 2 CPU cores); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DOCS = ROOT / "docs" / "benchmarks"
#: Seed of the held-out doublets; the detectors use scvi-tools' seed 0 (and 1) for their own.
HELD_OUT_SEED = 20231004
HELD_OUT_RATE = 0.10
#: scVI epochs before SOLO (scvi-tools' default would be 400 on sets this small; capped for time).
SCVI_EPOCHS = 100
log = logging.getLogger("doublets")


def read_counts(path: Path) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    adata.X = sp.csr_matrix(adata.X).astype(np.float32)
    adata.var_names_make_unique()
    return adata


def datasets(quick: bool) -> list[dict]:
    import schyena_tools as st

    zeisel = st.datasets.zeisel_brain()
    used = set(st.pretrained.zeisel_brain_model_card()["zeisel_brain_cells_in_training"])
    zeisel = zeisel[~zeisel.obs_names.isin(used)].copy()
    rng = np.random.default_rng(0)
    n_zeisel = 200 if quick else 1000
    zeisel = zeisel[np.sort(rng.choice(zeisel.n_obs, n_zeisel, replace=False))].copy()
    zeisel.X = sp.csr_matrix(zeisel.X).astype(np.float32)
    sets = [
        {"name": "Zeisel 2015 (1,000 unseen cells)", "adata": zeisel, "human": False},
        {
            "name": "Campbell 2017",
            "adata": read_counts(DATA / "campbell2017_sctk/campbell2017_sctk.h5ad"),
            "human": False,
        },
        {
            "name": "scCB2 E18 brain",
            "adata": read_counts(DATA / "sccb2_mbrainsub/sccb2_mbrainsub.h5ad"),
            "human": False,
        },
    ]
    darmanis = read_counts(DATA / "darmanis2015/darmanis2015.h5ad")
    sets.append({"name": "Darmanis 2015 (human)", "adata": darmanis, "human": True})
    if quick:
        sets = sets[:1]
    return sets


def with_held_out_doublets(adata: ad.AnnData) -> tuple[ad.AnnData, np.ndarray]:
    """Real cells plus 10% artificial doublets (seed ``HELD_OUT_SEED``); truth: 1 for the doublets."""
    from schyena_tools.model._doublets import doublet_parents

    n_held = max(int(round(HELD_OUT_RATE * adata.n_obs)), 5)
    parents = doublet_parents(adata.n_obs, n_held, HELD_OUT_SEED)
    counts = sp.csr_matrix(adata.X)
    doublets = counts[parents[:, 0]] + counts[parents[:, 1]]
    combined = ad.AnnData(
        sp.vstack([counts, doublets]).tocsr(), var=pd.DataFrame(index=adata.var_names.copy())
    )
    combined.obs_names = [*map(str, adata.obs_names), *(f"held_out_doublet_{i}" for i in range(n_held))]
    truth = np.r_[np.zeros(adata.n_obs), np.ones(n_held)].astype(int)
    return combined, truth


def score_schyena(adata: ad.AnnData, human: bool) -> np.ndarray:
    import schyena_tools as st

    adata = adata.copy()
    st.SCHyena.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # vocabulary coverage notes
        if human:
            reference = st.pretrained.load_zeisel_brain_model()
            model = st.SCHyena.load_query_data(adata, reference, case_insensitive=True)
        else:
            model = st.pretrained.load_zeisel_brain_model(adata)
    model.train_doublet_detector(progress_bar=False)
    return model.predict_doublets()["doublet_score"].to_numpy()


def score_scrublet(adata: ad.AnnData) -> np.ndarray:
    import scanpy as sc

    adata = adata.copy()
    # A fixed threshold: scores do not depend on it, and the automatic one needs scikit-image.
    sc.pp.scrublet(adata, threshold=0.25, random_state=0, verbose=False)
    return adata.obs["doublet_score"].to_numpy()


def score_solo(adata: ad.AnnData) -> np.ndarray:
    import scvi

    scvi.settings.seed = 0
    adata = adata.copy()
    scvi.model.SCVI.setup_anndata(adata)
    vae = scvi.model.SCVI(adata)
    vae.train(max_epochs=SCVI_EPOCHS, enable_progress_bar=False)
    solo = scvi.external.SOLO.from_scvi_model(vae)
    solo.train(enable_progress_bar=False)
    return solo.predict(soft=True)["doublet"].to_numpy()


def score_depth(adata: ad.AnnData) -> np.ndarray:
    return np.asarray(adata.X.sum(1)).ravel()


METHODS = {
    "scHyena doublet detector (bundled model, defaults)": score_schyena,
    "scrublet (sc.pp.scrublet)": score_scrublet,
    "SOLO (scvi-tools, on scVI)": score_solo,
    "depth alone (total counts)": score_depth,
}


def evaluate(name: str, adata: ad.AnnData, truth: np.ndarray, human: bool, rows: list, task: str) -> None:
    for method, scorer in METHODS.items():
        started = time.perf_counter()
        scores = scorer(adata, human) if scorer is score_schyena else scorer(adata)
        seconds = time.perf_counter() - started
        row = {
            "dataset": name,
            "truth": task,
            "cells": adata.n_obs,
            "doublets": int(truth.sum()),
            "method": method,
            "AUROC": roc_auc_score(truth, scores),
            "average precision": average_precision_score(truth, scores),
            "seconds": seconds,
        }
        log.info("%s", row)
        rows.append(row)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one small dataset, to check the script")
    parser.add_argument(
        "--out", default=str(DOCS / "doublets"), help="output prefix (.csv, _table.md, _run.json)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import scvi

    scvi.settings.seed = 0
    rows: list[dict] = []
    started = time.perf_counter()
    for entry in datasets(args.quick):
        adata = entry["adata"]
        combined, truth = with_held_out_doublets(adata)
        evaluate(entry["name"], combined, truth, entry["human"], rows, "10% held-out artificial doublets")
        if "cell_type" in adata.obs and (adata.obs["cell_type"].astype(str) == "hybrid").any():
            hybrid = (adata.obs["cell_type"].astype(str) == "hybrid").to_numpy().astype(int)
            evaluate(entry["name"], adata, hybrid, entry["human"], rows, "authors' 'hybrid' cells")
    table = pd.DataFrame(rows)
    table.to_csv(f"{args.out}.csv", index=False)
    shown = table.copy()
    for column in ("AUROC", "average precision"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    shown["seconds"] = shown["seconds"].map(lambda v: f"{v:.0f}")
    Path(f"{args.out}_table.md").write_text(shown.to_markdown(index=False) + "\n")
    Path(f"{args.out}_run.json").write_text(
        json.dumps(
            {"quick": args.quick, "seconds": time.perf_counter() - started, "held_out_seed": HELD_OUT_SEED},
            indent=1,
        )
    )
    print(shown.to_markdown(index=False))


if __name__ == "__main__":
    main()
