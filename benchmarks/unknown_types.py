"""Unknown cell types and calibrated confidence: leave one type out of fine-tuning, in turn.

Protocol (``docs/benchmarks/unknown_types.md``). Cells: the 2,455 cells of Zeisel 2015 that the
bundled model never saw (4,000 genes, read at the model's 19,972-gene length). Two stratified
folds (5-fold split, first two folds, seed 0), labels ``level1class`` (7 types) and
``level2class`` (47 subtypes). For each fold and each type present in its training part, that
type's cells are removed from the training part and the classifier is trained with
``train_classifier``'s default recipe (the linear probe on the frozen bundled model, with its
5-fold temperature) on the rest; the held-out fold is then scored:

- **unknown-type AUROC**: the left-out type's held-out cells against the other held-out cells,
  for three scores: the softmax baseline (1 - largest probability), scHyena's unknown-type score
  (:meth:`SCHyena.get_unknown_scores`: the mean of a confidence rank and a 10th-neighbour
  distance rank in 50 principal components of the classifier's standardised inputs; each half
  alone is reported too) and a kNN-distance score on PCA (50 components of the 2,000 most
  variable genes, log-normalised and scaled, fitted on the training cells; the same
  10th-neighbour rank);
- **accuracy** of the labels on the held-out cells of the known types;
- **expected calibration error** (15 bins) of the confidence on those cells, before (T = 1) and
  after temperature scaling;
- the share of left-out and of known cells above 0.9, 0.95 and 0.99
  (``predict(unknown_threshold=...)``), for scHyena's score and the PCA one.

The features of each cell are computed once (the probe reads a frozen encoder, so refitting the
readout per split is what ``train_classifier`` would do); one split is also run through the
public API and checked equal.

Run: ``python benchmarks/unknown_types.py`` (about 20 min on 2 CPU cores, most of it encoding).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
#: Thresholds of predict(unknown_threshold=...) whose flagged shares are reported.
THRESHOLDS = (0.9, 0.95, 0.99)
log = logging.getLogger("unknown_types")


def load_cells():
    import schyena_tools as st

    query = st.datasets.zeisel_brain()
    used = set(st.pretrained.zeisel_brain_model_card()["zeisel_brain_cells_in_training"])
    return query[~query.obs_names.isin(used)].copy()


def encode(query, cache: Path | None):
    """Cell embedding and measured-gene expression of every cell, as the probe reads them."""
    if cache is not None and cache.exists():
        saved = np.load(cache, allow_pickle=True)
        return saved["emb"], saved["vals"]
    import schyena_tools as st

    model = st.pretrained.load_zeisel_brain_model(query)
    target = model._validate_anndata()
    embeddings, values = [], []
    for _, out in model._inference_batches(target, None, 16, "encoding"):
        missing = out["missing"]
        embeddings.append(out["cell_embedding"].float().numpy())
        values.append(out["values"][:, ~missing].float().numpy())
    emb, vals = np.concatenate(embeddings), np.concatenate(values)
    if cache is not None:
        np.savez(cache, emb=emb, vals=vals)
    return emb, vals


def pca_space(query, train: np.ndarray) -> np.ndarray:
    """PCA-50 of the 2,000 most variable genes (seurat_v3 on the training cells' counts), all cells."""
    import scanpy as sc

    adata = query.copy()
    table = sc.pp.highly_variable_genes(adata[train], n_top_genes=2000, flavor="seurat_v3", inplace=False)
    adata = adata[:, table["highly_variable"].to_numpy()].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float64)
    mean, std = x[train].mean(0), x[train].std(0)
    x = np.clip((x - mean) / np.where(std > 0, std, 1.0), -10, 10)
    _, _, vt = np.linalg.svd(x[train] - x[train].mean(0), full_matrices=False)
    return (x @ vt[:50].T).astype(np.float32)


def rank_score(reference: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Rank of the 10th-neighbour distance among the reference cells' own (as the package's)."""
    from schyena_tools.model._confidence import UNKNOWN_NEIGHBOURS, _kth_neighbour_distance

    ref, q = torch.from_numpy(reference), torch.from_numpy(query)
    own = np.sort(_kth_neighbour_distance(ref, ref, UNKNOWN_NEIGHBOURS, True))
    return np.searchsorted(own, _kth_neighbour_distance(ref, q, UNKNOWN_NEIGHBOURS, False)) / len(own)


def default_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int):
    """``train_classifier``'s default probe on ``features``: weights, bias and out-of-fold logits.

    The package's own early-stopped fit (seed 0, as ``scvi.settings.seed`` in :func:`main`); the
    out-of-fold logits feed the temperature and the unknown-type reference, as in the package.
    """
    from schyena_tools.model._linear_readout import early_stopped_probe

    _, weight, bias, out_of_fold = early_stopped_probe(features, labels, n_classes, 1.0, seed=0)
    return weight, bias, out_of_fold


def one_split(emb, vals, labels, train, test, left_out, pca):
    """Fit the default probe without ``left_out`` and score the held-out cells."""
    from schyena_tools.model._confidence import (
        expected_calibration_error,
        fit_temperature,
        fit_unknown_reference,
        project,
        unknown_scores,
    )
    from schyena_tools.model._linear_readout import readout_features, set_readout_standardization
    from schyena_tools.nn import CellTypeClassifier

    fit = train[labels[train] != left_out]
    classes = sorted(set(labels[fit]))
    code = {c: i for i, c in enumerate(classes)}
    y_fit = torch.tensor([code[c] for c in labels[fit]])
    head = CellTypeClassifier(emb.shape[1], vals.shape[1], len(classes))
    e, v = torch.from_numpy(emb), torch.from_numpy(vals)
    set_readout_standardization(head, e[fit], v[fit], None)
    features = readout_features(head, e[fit], v[fit], None)
    weight, bias, out_of_fold = default_probe(features, y_fit, len(classes))
    temperature = fit_temperature(out_of_fold, y_fit)
    test_features = readout_features(head, e[test], v[test], None)
    test_logits = (test_features @ weight.T + bias).double()
    raw = torch.softmax(test_logits, 1).numpy()
    calibrated = torch.softmax(test_logits / temperature, 1).numpy()
    unknown = labels[test] == left_out
    known = ~unknown
    y_known = np.array([code[c] for c in labels[test][known]])
    reference = fit_unknown_reference(
        features, torch.softmax(out_of_fold.double() / temperature, 1).max(1).values.numpy(), seed=0
    )
    coordinates = project(reference, test_features.float())
    confidence = calibrated.max(1)
    schyena_score = unknown_scores(reference, coordinates, confidence)
    # Its two halves alone, for the record: very unsure, or very far.
    confidence_half = unknown_scores({**reference, "distances": np.zeros(1)}, coordinates, confidence) * 2 - 1
    distance_half = unknown_scores({**reference, "confidences": np.ones(1)}, coordinates, confidence) * 2 - 1
    pca_score = rank_score(pca[fit], pca[test])
    return {
        "left_out": left_out,
        "left_out_cells": int(unknown.sum()),
        "temperature": temperature,
        "AUROC softmax (1 - max p)": roc_auc_score(unknown, 1 - calibrated.max(1)),
        "AUROC scHyena unknown score": roc_auc_score(unknown, schyena_score),
        "AUROC its confidence rank alone": roc_auc_score(unknown, confidence_half),
        "AUROC its distance rank alone": roc_auc_score(unknown, distance_half),
        "AUROC kNN distance on PCA": roc_auc_score(unknown, pca_score),
        "accuracy on known types": float((calibrated[known].argmax(1) == y_known).mean()),
        "ECE before": expected_calibration_error(raw[known], y_known),
        "ECE after": expected_calibration_error(calibrated[known], y_known),
        **{f"left-out flagged at {t}": float((schyena_score[unknown] > t).mean()) for t in THRESHOLDS},
        **{f"known flagged at {t}": float((schyena_score[known] > t).mean()) for t in THRESHOLDS},
        **{f"PCA left-out flagged at {t}": float((pca_score[unknown] > t).mean()) for t in THRESHOLDS},
        **{f"PCA known flagged at {t}": float((pca_score[known] > t).mean()) for t in THRESHOLDS},
    }, raw


def api_check(query, emb, vals, labels, train, test, left_out) -> float:
    """One split, on 300 training and 100 held-out cells, through ``train_classifier`` / ``predict``
    and through the feature path of :func:`one_split`: the largest difference of probabilities."""
    import schyena_tools as st
    from schyena_tools.model._linear_readout import readout_features, set_readout_standardization
    from schyena_tools.nn import CellTypeClassifier

    fit = train[labels[train] != left_out][:300]
    test = test[:100]
    classes = sorted(set(labels[fit]))
    y_fit = torch.tensor([classes.index(c) for c in labels[fit]])
    head = CellTypeClassifier(emb.shape[1], vals.shape[1], len(classes))
    e, v = torch.from_numpy(emb), torch.from_numpy(vals)
    set_readout_standardization(head, e[fit], v[fit], None)
    weight, bias, _ = default_probe(readout_features(head, e[fit], v[fit], None), y_fit, len(classes))
    expected = torch.softmax(readout_features(head, e[test], v[test], None) @ weight.T + bias, 1).numpy()

    cells = np.concatenate([fit, test])
    fold = query[cells].copy()
    bench = np.full(fold.n_obs, "Unknown", dtype=object)
    bench[: len(fit)] = labels[fit]
    fold.obs["bench_label"] = pd.Categorical(bench)
    st.SCHyena.setup_anndata(fold, labels_key="bench_label")
    model = st.pretrained.load_zeisel_brain_model(fold)
    model.train_classifier(calibrate=False, enable_progress_bar=False)  # the feature path has T = 1 here
    probabilities = model.predict(indices=np.arange(len(fit), len(cells)), soft=True, progress_bar=False)
    return float(np.abs(probabilities[classes].to_numpy() - expected).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", default=None, help="npz file to keep the encoded features in")
    parser.add_argument("--levels", default="level1class,level2class")
    parser.add_argument("--skip-api-check", action="store_true")
    parser.add_argument(
        "--level2-types",
        type=int,
        default=4,
        help="level2class: leave out only the N subtypes with most held-out cells, in fold 0 only (each "
        "split solves a 46-class probe 6 times; all 47 x 2 would take hours on 2 cores); 0: all",
    )
    parser.add_argument(
        "--out", default=str(DOCS / "unknown_types"), help="output prefix (.csv, _table.md, _run.json)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import scvi

    scvi.settings.seed = 0
    started = time.perf_counter()
    query = load_cells()
    emb, vals = encode(query, None if args.cache is None else Path(args.cache))
    rows, checks = [], {}
    for level in args.levels.split(","):
        labels = query.obs[level].astype(str).to_numpy()
        splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(emb, labels))[:2]
        for fold_id, (train, test) in enumerate(splits):
            types = sorted(set(labels[train]))
            if level == "level2class" and args.level2_types:
                if fold_id > 0:
                    continue
                held = pd.Series(labels[test]).value_counts()
                types = sorted(held.index[: args.level2_types])
            pca = pca_space(query, train)
            for left_out in types:
                if (labels[test] == left_out).sum() < 3:
                    continue  # too few held-out cells of the type for an AUROC
                row, raw = one_split(emb, vals, labels, train, test, left_out, pca)
                row.update(level=level, fold=fold_id)
                log.info("%s", row)
                rows.append(row)
                if not args.skip_api_check and not checks:
                    checks[f"{level} fold {fold_id} without {left_out} (300 + 100 cells)"] = api_check(
                        query, emb, vals, labels, train, test, left_out
                    )
                    log.info("API check: %s", checks)
    table = pd.DataFrame(rows)
    table.to_csv(f"{args.out}.csv", index=False)
    metrics = [c for c in table.columns if c not in ("left_out", "level", "fold", "left_out_cells")]
    summary = table.groupby("level")[metrics].mean().T
    summary.columns = [
        f"{c} (mean over {int((table.level == c).sum())} left-out splits)" for c in summary.columns
    ]
    Path(f"{args.out}_table.md").write_text(summary.to_markdown(floatfmt=".3f") + "\n")
    Path(f"{args.out}_run.json").write_text(
        json.dumps(
            {"seconds": time.perf_counter() - started, "api_check_max_abs_difference": checks}, indent=1
        )
    )
    print(summary.to_markdown(floatfmt=".3f"))
    print(checks)


if __name__ == "__main__":
    main()
