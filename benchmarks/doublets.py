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
- An ablation row, **the same detector on random weights** (the bundled model's vocabulary, width
  and depth, seed 0): what the pre-trained encoder adds to the readout's expression and depth
  features.
- A reference row, **depth alone** (total counts as the score): the part of the signal that is
  just "two cells have more counts than one".

Datasets: Zeisel 2015 (1,000 of the 2,455 cells the bundled model never saw), scCB2 E18 brain,
Darmanis 2015 human cortex (genes matched case-insensitively). The sets the bundled model was
pre-trained on are left out (La Manno, Campbell 2017, BICAN caudate, Hochgerner and the other
550 Zeisel cells; Campbell was a row here until the bundled model's corpus took it in).

Run: ``python benchmarks/doublets.py`` (about an hour on 2 shared CPU cores; SOLO and scHyena
dominate); ``--quick`` for a smoke run. ``--methods schyena`` re-runs only the named methods
(``schyena``, ``random``, ``scrublet``, ``solo``, ``depth``) and replaces their rows in the CSV, keeping the
others: for a new bundled model, whose rows are the only ones it changes (the inputs, the
held-out doublets and the baselines' seeds are fixed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCHYENA_DATA", ROOT.parent / "shared" / "data"))
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


def score_schyena(adata: ad.AnnData, human: bool, random_weights: bool = False) -> np.ndarray:
    import schyena_tools as st

    adata = adata.copy()
    st.SCHyena.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # vocabulary coverage notes
        reference = st.pretrained.load_zeisel_brain_model()
        if random_weights:
            reference = random_network_like(reference)
        model = st.SCHyena.load_query_data(adata, reference, case_insensitive=human)
    model.train_doublet_detector(progress_bar=False)
    return model.predict_doublets()["doublet_score"].to_numpy()


def random_network_like(reference):
    """The bundled model's network (vocabulary, width, depth) with random weights (seed 0)."""
    import scvi
    import torch

    import schyena_tools as st

    card = st.pretrained.zeisel_brain_model_card()["settings"]
    genes = pd.Index(reference.gene_vocabulary)
    tiny = ad.AnnData(
        sp.csr_matrix(np.ones((2, len(genes)), dtype=np.float32)), var=pd.DataFrame(index=genes)
    )
    st.SCHyena.setup_anndata(tiny)
    scvi.settings.seed = 0
    torch.manual_seed(0)
    return st.SCHyena(tiny, d_model=card["d_model"], n_layers=card["n_layers"])


def score_schyena_random(adata: ad.AnnData, human: bool) -> np.ndarray:
    """Ablation: the same detector on the same network with random weights."""
    return score_schyena(adata, human, random_weights=True)


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
    "same detector, random weights (ablation)": score_schyena_random,
    "scrublet (sc.pp.scrublet)": score_scrublet,
    "SOLO (scvi-tools, on scVI)": score_solo,
    "depth alone (total counts)": score_depth,
}
#: ``--methods`` names.
SHORT_NAMES = dict(zip(("schyena", "random", "scrublet", "solo", "depth"), METHODS, strict=True))


def evaluate(
    name: str, adata: ad.AnnData, truth: np.ndarray, human: bool, rows: list, task: str, methods: list[str]
) -> None:
    for method in methods:
        scorer = METHODS[method]
        started = time.perf_counter()
        scores = scorer(adata, human) if scorer in (score_schyena, score_schyena_random) else scorer(adata)
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
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(SHORT_NAMES),
        default=None,
        help="re-run only these methods; the CSV's other rows are kept",
    )
    args = parser.parse_args()
    methods = list(METHODS) if args.methods is None else [SHORT_NAMES[m] for m in args.methods]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import scvi

    scvi.settings.seed = 0
    rows: list[dict] = []
    started = time.perf_counter()
    for entry in datasets(args.quick):
        adata = entry["adata"]
        combined, truth = with_held_out_doublets(adata)
        evaluate(
            entry["name"], combined, truth, entry["human"], rows, "10% held-out artificial doublets", methods
        )
        if "cell_type" in adata.obs and (adata.obs["cell_type"].astype(str) == "hybrid").any():
            hybrid = (adata.obs["cell_type"].astype(str) == "hybrid").to_numpy().astype(int)
            evaluate(entry["name"], adata, hybrid, entry["human"], rows, "authors' 'hybrid' cells", methods)
    table = pd.DataFrame(rows)
    if args.methods is not None and Path(f"{args.out}.csv").is_file():
        # keep the other methods' rows on the inputs of this run (same set, truth and cell
        # count: a --quick run never mixes with a full one), in the table's order
        inputs = ["dataset", "truth", "cells"]
        earlier = pd.read_csv(f"{args.out}.csv").merge(table[inputs].drop_duplicates(), on=inputs)
        earlier = earlier[~earlier["method"].isin(methods)]
        table = pd.concat([earlier, table], ignore_index=True)
        order = {name: i for i, name in enumerate(METHODS)}
        table = table.sort_values(
            ["dataset", "truth", "method"],
            key=lambda c: (
                c.map(order) if c.name == "method" else c.map({v: i for i, v in enumerate(c.unique())})
            ),
            kind="stable",
        )
    table.to_csv(f"{args.out}.csv", index=False)
    shown = table.copy()
    for column in ("AUROC", "average precision"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    shown["seconds"] = shown["seconds"].map(lambda v: f"{v:.0f}")
    Path(f"{args.out}_table.md").write_text(shown.to_markdown(index=False) + "\n")
    Path(f"{args.out}_run.json").write_text(
        json.dumps(
            {
                "quick": args.quick,
                "methods_run": methods,
                "seconds": time.perf_counter() - started,
                "held_out_seed": HELD_OUT_SEED,
            },
            indent=1,
        )
    )
    print(shown.to_markdown(index=False))


if __name__ == "__main__":
    main()
