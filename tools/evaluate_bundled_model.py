"""Held-out figures of the bundled model, side by side with the previous one and the baselines.

Run from a checkout with ``../shared/data`` beside it (``SCHYENA_DATA`` overrides)::

    python tools/evaluate_bundled_model.py      # ~20 CPU minutes on 2 cores

On every held-out brain set (never in either model's pre-training data):

* Zeisel 2015, the 3,005-cell release without the 550 cells the bundled model was pre-trained
  on (a stratified ``--max-cells`` of the 2,455 others), its 7 major classes;
* Darmanis 2015 human cortex (the authors' "hybrid" doublets dropped), 8 types;
* Camp 2015 human fetal cortex, 7 types;
* scCB2 E18 mouse brain has no cell-type labels, so no figure (listed as such).

Measured, for the new model (``--model``), the previous one (its ``model.pt`` at
``--previous-commit``) and the baselines on the same cells:

* **zero-shot**: 10-NN label agreement of ``get_latent_representation`` (the model mapped onto
  the set by name, ignoring case for human sets) against PCA of 2,000 HVGs (scanpy's recipe,
  50 components);
* **few-shot annotation**: ``train_classifier()`` with its defaults on ``--per-class`` labelled
  cells per type (seeded, stratified; at most half of a type), predictions on the other cells,
  macro-F1; against logistic regression (CellTypist's recipe, every gene) on the same split.

Writes ``held_out`` into the new model's ``model_card.json`` and the table to
``docs/benchmarks/bundled_model.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _downstream_baselines import log_normalize, logistic_regression  # noqa: E402
from _embedding_scores import pca_of_hvgs  # noqa: E402

import schyena_tools as st  # noqa: E402
from schyena_tools.demo import embedding_label_agreement  # noqa: E402

DATA = Path(os.environ.get("SCHYENA_DATA", ROOT.parent / "shared" / "data"))
MODEL_DIR = ROOT / "src" / "schyena_tools" / "pretrained" / "_files" / "zeisel_brain"
#: (name, file under DATA or None for the bundled Zeisel release, label column, ignore case, dropped)
HELD_OUT = (
    ("Zeisel 2015 (2,455 cells not pre-trained on)", None, "level1class", False, ()),
    ("Darmanis 2015 (human cortex)", "darmanis2015/darmanis2015.h5ad", "cell_type", True, ("hybrid",)),
    ("Camp 2015 (human fetal cortex)", "camp2015_SOUP/camp_220x12694_counts.h5ad", "cell_type", True, ()),
)


def held_out_set(file, label, dropped, max_cells, training_cells, seed=0) -> ad.AnnData:
    if file is None:
        adata = st.datasets.zeisel_brain()
        adata = adata[~adata.obs_names.isin(training_cells)].copy()
    else:
        adata = ad.read_h5ad(DATA / file)
    adata.X = sp.csr_matrix(adata.X).astype(np.float32)
    adata.obs["label"] = adata.obs[label].astype(str).to_numpy()
    adata = adata[~adata.obs["label"].isin(dropped).to_numpy()].copy()
    adata.var_names_make_unique()
    if adata.n_obs > max_cells:
        rng = np.random.default_rng(seed)
        share = max_cells / adata.n_obs
        keep = np.concatenate(
            [
                rng.choice(cells, max(1, round(share * len(cells))), replace=False)
                for cells in adata.obs.groupby("label", observed=True).indices.values()
            ]
        )
        adata = adata[np.sort(keep)].copy()
    return adata


def few_shot_split(labels: np.ndarray, per_class: int, seed: int = 0):
    """``per_class`` labelled cells per type (at most half of it; types of < 4 cells left out)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        if len(cells) < 4:
            continue
        n = min(per_class, len(cells) // 2)
        train.extend(cells[:n])
        test.extend(cells[n:])
    return np.sort(train), np.sort(test)


def model_figures(reference, adata: ad.AnnData, case_insensitive: bool, train, test) -> dict:
    """Zero-shot 10-NN agreement and few-shot macro-F1 of the ``reference`` model on ``adata``."""
    data = adata.copy()
    labels = data.obs["label"].to_numpy()
    data.obs["fewshot"] = "Unknown"
    data.obs.iloc[train, data.obs.columns.get_loc("fewshot")] = labels[train]
    st.SCHyena.setup_anndata(data, labels_key="fewshot", unlabeled_category="Unknown")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = st.SCHyena.load_query_data(data, reference, case_insensitive=case_insensitive)
    start = time.perf_counter()
    embedding = model.get_latent_representation(progress_bar=False)
    knn = embedding_label_agreement(embedding, labels)
    model.train_classifier(enable_progress_bar=False)
    predicted = np.asarray(model.predict(indices=test, progress_bar=False))
    return {
        "knn10": round(knn, 3),
        "fewshot_macro_f1": round(f1_score(labels[test], predicted, average="macro"), 3),
        "vocabulary_genes_measured": int(model.n_vocabulary_genes_measured_),
        "seconds": round(time.perf_counter() - start, 1),
    }


def baseline_figures(adata: ad.AnnData, train, test) -> dict:
    """PCA of HVGs' zero-shot 10-NN agreement and logistic regression's few-shot macro-F1."""
    labels = adata.obs["label"].to_numpy()
    lr = logistic_regression(log_normalize(adata.X), labels, train, test)
    return {
        "pca_knn10": round(embedding_label_agreement(pca_of_hvgs(adata), labels), 3),
        "lr_fewshot_macro_f1": round(f1_score(labels[test], lr, average="macro"), 3),
    }


def previous_model(commit: str, into: Path) -> Path:
    """The bundled ``model.pt`` as committed at ``commit``, in a folder of its own."""
    into.mkdir(parents=True, exist_ok=True)
    relative = MODEL_DIR.relative_to(ROOT) / "model.pt"
    blob = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=ROOT, capture_output=True, check=True)
    (into / "model.pt").write_bytes(blob.stdout)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--previous-commit", default="fbf90d9")
    parser.add_argument("--max-cells", type=int, default=1200)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "bundled_model.md")
    args = parser.parse_args()

    card_path = args.model / "model_card.json"
    card = json.loads(card_path.read_text())
    training_cells = card["zeisel_brain_cells_in_training"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # each model read from disk once; every set gets its own query model from it
        new_model = st.pretrained.load_model(args.model)
        previous = st.pretrained.load_model(previous_model(args.previous_commit, Path(tmp) / "previous"))
        for name, file, label, case_insensitive, dropped in HELD_OUT:
            adata = held_out_set(file, label, dropped, args.max_cells, training_cells)
            labels = adata.obs["label"].to_numpy()
            train, test = few_shot_split(labels, args.per_class)
            row = {
                "set": name,
                "cells": adata.n_obs,
                "types": int(len(np.unique(labels[test]))),
                "labelled": len(train),
                **baseline_figures(adata, train, test),
                "new": model_figures(new_model, adata, case_insensitive, train, test),
                "previous": model_figures(previous, adata, case_insensitive, train, test),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    rows.append({"set": "scCB2 E18 mouse brain", "note": "no cell-type labels: no figure"})
    card["held_out"] = {
        "protocol": f"zero-shot 10-NN label agreement vs PCA of 2,000 HVGs; few-shot: train_classifier() "
        f"defaults on {args.per_class} labelled cells per type (seed 0), macro-F1 on the rest, vs logistic "
        f"regression on the same split; previous model = model.pt at {args.previous_commit}",
        "rows": rows,
    }
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    lines = [
        "| held-out set | cells | types | labelled | 10-NN: PCA of HVGs | 10-NN: previous model "
        "| 10-NN: new model | few-shot macro-F1: logistic regression | few-shot: previous model "
        "| few-shot: new model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "note" in row:
            lines.append(f"| {row['set']} | {row['note']} |||||||||")
            continue
        lines.append(
            f"| {row['set']} | {row['cells']} | {row['types']} | {row['labelled']} | {row['pca_knn10']} "
            f"| {row['previous']['knn10']} | {row['new']['knn10']} | {row['lr_fewshot_macro_f1']} "
            f"| {row['previous']['fewshot_macro_f1']} | {row['new']['fewshot_macro_f1']} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out.with_name(args.out.stem + "_table.md")).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
