"""Zero-shot cell embeddings of the downstream benchmark: the baselines and the scores.

Baselines are what a biologist computes first (PCA of highly variable genes, scVI's latent
space), each from raw counts without labels; scores are the 10-NN label agreement of the
README demo and scib-metrics' bio-conservation metrics (the scverse standard). Labels are used
only to score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: scib-metrics rows kept from ``Benchmarker.get_results`` (raw, not min-max scaled).
SCIB_METRICS = {
    "Isolated labels": "isolated_labels",
    "KMeans NMI": "kmeans_nmi",
    "KMeans ARI": "kmeans_ari",
    "Silhouette label": "silhouette_label",
    "cLISI": "clisi",
    "Bio conservation": "bio_conservation",
}


def pca_of_hvgs(adata, n_hvg: int = 2000, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """The scanpy recipe: HVGs (Seurat v3 on counts), normalise to 1e4, log1p, scale (clip 10), PCA."""
    import scanpy as sc

    data = adata.copy()
    if data.n_vars > n_hvg:
        sc.pp.highly_variable_genes(data, n_top_genes=n_hvg, flavor="seurat_v3", subset=True)
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    sc.pp.scale(data, max_value=10)
    n_comps = min(n_comps, data.n_obs - 1, data.n_vars - 1)
    return sc.pp.pca(data.X, n_comps=n_comps, random_state=seed).astype(np.float32)


def scvi_latent(adata, max_epochs: int, seed: int = 0) -> np.ndarray:
    """scVI's latent mean (n_latent 10, 2,000 HVGs), trained ``max_epochs`` without labels."""
    from _downstream_baselines import fit_scvi

    model = fit_scvi(adata, max_epochs=max_epochs, seed=seed)
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def score_embeddings(embeddings: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict]:
    """10-NN label agreement and scib-metrics bio-conservation scores for every embedding.

    One scib-metrics ``Benchmarker`` run over all embeddings of a data set (one batch, so the
    batch-correction metrics are off), results unscaled.
    """
    import anndata as ad
    from scib_metrics.benchmark import Benchmarker

    from schyena_tools.demo import embedding_label_agreement

    keys = {name: f"emb{i}" for i, name in enumerate(embeddings)}
    first = next(iter(embeddings.values()))
    holder = ad.AnnData(np.zeros((first.shape[0], 1), dtype=np.float32))
    holder.obs["label"] = pd.Categorical(np.asarray(labels).astype(str))
    holder.obs["batch"] = "one"
    for name, key in keys.items():
        holder.obsm[key] = np.asarray(embeddings[name], dtype=np.float32)
    bench = Benchmarker(
        holder,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=list(keys.values()),
        batch_correction_metrics=None,
        pre_integrated_embedding_obsm_key=keys[next(iter(embeddings))],  # unused without batch metrics
        progress_bar=False,
    )
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    scores = {}
    for name, key in keys.items():
        row = {"knn_agreement": embedding_label_agreement(embeddings[name], labels, n_neighbors=10)}
        row |= {column: float(table.loc[key, metric]) for metric, column in SCIB_METRICS.items()}
        scores[name] = row
    return scores
