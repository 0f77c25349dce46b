"""Depth augmentation for the cell embedding: does a consistency term on thinned copies help?

The bundled model's zero-shot embedding predicts each cell's log sequencing depth almost
perfectly (linear R^2 0.98 on Campbell 2017 and La Manno 2016, against 0.77 / 0.90 for PCA of
HVGs) and trails PCA in 10-NN label agreement. This study pre-trains the same network on each
*tuning* set (not the demo's cells, not a test fold; labels used only to score) with and
without depth augmentation (``SCHyena.train(depth_augmentation=..., consistency_weight=...)``:
every minibatch also holds a binomially thinned copy of each cell, whose embedding is trained
to describe the original and to lie close to it), and scores the embeddings beside PCA of
2,000 HVGs, variants of PCA (unscaled, every gene, 32 components) and the bundled model with and
without its depth direction: 10-NN agreement, scib-metrics bio-conservation, and how well a linear fit on the
embedding predicts log depth.

Run ``python benchmarks/embedding_depth.py`` (both sets; ``--set NAME`` runs one, so two can
run side by side; about 30 minutes a set on one CPU core). Rows go to
``docs/benchmarks/embedding_depth.csv`` (a row per set and variant, replaced when re-run).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _embedding_scores as es  # noqa: E402
import downstream  # noqa: E402
from _results_csv import replace_rows  # noqa: E402

SETS = {
    "Campbell 2017": ("campbell2017_sctk/campbell2017_sctk.h5ad", "clust_all"),
    "La Manno 2016": ("lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad", "Cell_type"),
}
#: Pre-training variants: name -> extra ``train`` arguments.
VARIANTS = {
    "masked expression only (default)": {},
    "thinned copies + consistency 1": {"depth_augmentation": 0.2, "consistency_weight": 1.0},
    "thinned copies without consistency term": {"depth_augmentation": 0.2, "consistency_weight": 0.0},
    "multinomial cell head": {"cell_objective": "multinomial"},
    "cell head x10": {"plan_kwargs": {"cell_weight": 10.0}},
    "multinomial cell head x10": {"cell_objective": "multinomial", "plan_kwargs": {"cell_weight": 10.0}},
}
#: The network and training of the embedding study (``embedding_recipe.py``).
ARCH = dict(d_model=32, n_layers=2)
EPOCHS = 2
BATCH = 8
OUT = downstream.DOCS / "embedding_depth.csv"
log = logging.getLogger("embedding_depth")


def depth_r2(embedding: np.ndarray, log_depth: np.ndarray) -> float:
    """R^2 of a least-squares linear fit of log depth on the embedding (in-sample)."""
    from sklearn.linear_model import LinearRegression

    fit = LinearRegression().fit(embedding, log_depth)
    return float(fit.score(embedding, log_depth))


def reference_embeddings(adata, case_insensitive: bool = False) -> dict[str, np.ndarray]:
    """Embeddings that need no pre-training: PCA variants and the bundled model, as is and without depth.

    PCA (50 components, or 32 = the network's width) of the log-normalised profile
    (normalise to 1e4, ``log1p``), of the 2,000 HVGs (Seurat v3 on counts) or of every gene,
    scaled (each gene to unit variance, clipped at 10) or not; the bundled model read through
    ``load_query_data``, and the same with its linear fit on log depth subtracted.
    """
    import scanpy as sc
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression

    import schyena_tools as st

    counts = adata.X.toarray().astype(np.float64)
    log_norm = np.log1p(counts / counts.sum(1, keepdims=True).clip(1e-8) * 1e4)
    hvg = sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", inplace=False)
    hvg = hvg["highly_variable"].to_numpy()

    def pca(matrix, scale, n_comps=50):
        matrix = matrix[:, matrix.std(0) > 0] - matrix[:, matrix.std(0) > 0].mean(0)
        if scale:
            matrix = np.clip(matrix / matrix.std(0), -10, 10)
        return PCA(min(n_comps, matrix.shape[0] - 1), random_state=0).fit_transform(matrix)

    out = {
        "PCA, 2,000 HVG, unscaled": pca(log_norm[:, hvg], False),
        "PCA, every gene, scaled": pca(log_norm, True),
        "PCA, every gene, unscaled": pca(log_norm, False),
        "PCA, every gene, unscaled, 32 components": pca(log_norm, False, 32),
    }
    query = adata.copy()
    st.SCHyena.setup_anndata(query)
    model = st.SCHyena.load_query_data(
        query, st.pretrained.load_zeisel_brain_model(), case_insensitive=case_insensitive
    )
    bundled = model.get_latent_representation(batch_size=BATCH, progress_bar=False)
    log_depth = np.log1p(counts.sum(1))[:, None]
    fit = LinearRegression().fit(log_depth, bundled)
    out["bundled model (zero-shot)"] = bundled
    out["bundled model, log depth regressed out"] = bundled - fit.predict(log_depth)
    out["log depth alone"] = log_depth
    return out


def write_rows(rows: list[dict]) -> None:
    """Replace this run's (set, method) rows in the CSV; safe with a run of another set beside it."""
    replace_rows(OUT, rows, ["dataset", "method"])


def run_set(name: str, variants: list[str]) -> None:
    import scvi
    import torch

    import schyena_tools as st

    path, label = SETS[name]
    adata = downstream.read_target(path, label)
    labels = adata.obs["label"].to_numpy()
    counts = adata.X
    log_depth = np.log1p(np.asarray(counts.sum(1)).ravel())
    embeddings = {"PCA of 2,000 HVG": es.pca_of_hvgs(adata)}
    embeddings |= reference_embeddings(adata)
    # The network before any step: the data-dependent start that train() makes first.
    scvi.settings.seed = downstream.SEED
    torch.manual_seed(downstream.SEED)
    data = adata.copy()
    st.SCHyena.setup_anndata(data)
    untrained = st.SCHyena(data, **ARCH)
    untrained._initialize_from_data()
    untrained.is_trained_ = True  # embed the untrained network without the warning
    embeddings["scHyena: untrained (data-dependent start only)"] = untrained.get_latent_representation(
        batch_size=BATCH, progress_bar=False
    )
    info = {name: {} for name in embeddings}
    for variant in variants:
        scvi.settings.seed = downstream.SEED
        torch.manual_seed(downstream.SEED)
        data = adata.copy()
        st.SCHyena.setup_anndata(data)
        model = st.SCHyena(data, **ARCH)
        start = time.perf_counter()
        model.train(max_epochs=EPOCHS, batch_size=BATCH, enable_progress_bar=False, **VARIANTS[variant])
        seconds = time.perf_counter() - start
        embeddings[f"scHyena: {variant}"] = model.get_latent_representation(
            batch_size=BATCH, progress_bar=False
        )
        history = model.history
        info[f"scHyena: {variant}"] = {
            "seconds": round(seconds, 1),
            **{
                f"final_{key}_validation": float(history[f"{key}_validation"].iloc[-1, 0])
                for key in ("cell_mse", "cell_kl")
                if f"{key}_validation" in history
            },
            "final_masked_mse_validation": float(history["masked_mse_validation"].iloc[-1, 0]),
            **{k: v for k, v in VARIANTS[variant].items() if k != "plan_kwargs"},
            **VARIANTS[variant].get("plan_kwargs", {}),
        }
        log.info("%s / %s: %.0f s", name, variant, seconds)
    scores = es.score_embeddings(embeddings, labels)
    rows = [
        dict(
            dataset=name,
            method=method,
            cells=adata.n_obs,
            genes=adata.n_vars,
            epochs=(0 if "untrained" in method else EPOCHS) if method.startswith("scHyena") else None,
            **scores[method],
            depth_r2=depth_r2(embeddings[method], log_depth),
            **info[method],
        )
        for method in embeddings
    ]
    write_rows(rows)
    print(pd.DataFrame(rows).to_string())


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=list(SETS), default=None, help="one tuning set (default: both)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help='comma-separated subset of the variants ("": only the rows without pre-training, minutes)',
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for name in [args.set] if args.set else list(SETS):
        run_set(name, [v for v in args.variants.split(",") if v])


if __name__ == "__main__":
    main()
