"""Baselines of the downstream benchmark: what biologists use for annotation and imputation.

Every function takes raw counts (cells x genes, dense or sparse) plus fold indices and returns
predictions; none sees a held-out label or a hidden count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

TARGET_SUM = 1e4


def log_normalize(counts) -> np.ndarray:
    """``log1p(counts / library * 1e4)`` as a dense float32 array (the scanpy recipe)."""
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    counts = counts.astype(np.float64)
    library = counts.sum(1, keepdims=True)
    library[library == 0] = 1.0
    return np.log1p(counts / library * TARGET_SUM).astype(np.float32)


def _scaled(log_expression: np.ndarray, train: np.ndarray, test: np.ndarray):
    """Scale genes to unit variance on the training cells, clip at 10 (``sc.pp.scale``)."""
    scaler = StandardScaler().fit(log_expression[train])
    return (
        np.clip(scaler.transform(log_expression[train]), -10, 10),
        np.clip(scaler.transform(log_expression[test]), -10, 10),
    )


def logistic_regression(log_expression, labels, train, test, seed=0) -> np.ndarray:
    """CellTypist recipe: scaled log-normalised expression, multinomial logistic regression (C=1)."""
    x_train, x_test = _scaled(log_expression, train, test)
    classifier = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
    classifier.fit(x_train, labels[train])
    return classifier.predict(x_test)


def knn_on_pca(log_expression, labels, train, test, n_components=50, k=15, seed=0) -> np.ndarray:
    """kNN (k=15, distance-weighted) on the first 50 principal components of the scaled data."""
    x_train, x_test = _scaled(log_expression, train, test)
    pca = PCA(n_components=min(n_components, len(train) - 1), random_state=seed).fit(x_train)
    classifier = KNeighborsClassifier(n_neighbors=min(k, len(train)), weights="distance")
    classifier.fit(pca.transform(x_train), labels[train])
    return classifier.predict(pca.transform(x_test))


def fit_scvi(adata, max_epochs: int, seed: int = 0, n_top_genes: int = 2000):
    """scVI (n_latent 10) on raw counts of every cell, no labels: the base of scANVI.

    On the top ``n_top_genes`` highly variable genes (Seurat v3 flavour on counts), the
    recipe of the scvi-tools tutorials.
    """
    import scanpy as sc
    import scvi

    scvi.settings.seed = seed
    adata = adata.copy()
    if adata.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat_v3", subset=True)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_latent=10)
    model.train(max_epochs=max_epochs, enable_progress_bar=False, train_size=1.0)
    return model


def scanvi(scvi_model, labels, train, test, max_epochs: int, seed: int = 0) -> np.ndarray:
    """scANVI from a label-free scVI, trained with the held-out cells marked unlabelled."""
    import scvi

    scvi.settings.seed = seed
    adata = scvi_model.adata.copy()
    fold_labels = np.full(adata.n_obs, "Unknown", dtype=object)
    fold_labels[train] = labels[train]
    adata.obs["bench_label"] = pd.Categorical(fold_labels)
    model = scvi.model.SCANVI.from_scvi_model(
        scvi_model, unlabeled_category="Unknown", labels_key="bench_label", adata=adata
    )
    model.train(max_epochs=max_epochs, n_samples_per_label=100, enable_progress_bar=False, train_size=1.0)
    return np.asarray(model.predict(indices=test)).astype(str)


# ---------------------------------------------------------------------- imputation
def gene_mean(log_observed: np.ndarray) -> np.ndarray:
    """Every entry imputed by its gene's mean over cells (zeros included)."""
    return np.broadcast_to(log_observed.mean(0, keepdims=True), log_observed.shape)


def gene_nonzero_mean(log_observed: np.ndarray) -> np.ndarray:
    """Every entry imputed by its gene's mean over the cells where it is non-zero."""
    nonzero = log_observed > 0
    means = log_observed.sum(0) / np.maximum(nonzero.sum(0), 1)
    return np.broadcast_to(means[None, :], log_observed.shape)


def magic_diffusion(log_observed: np.ndarray, knn=5, decay=1.0, t=3, n_pca=100, seed=0) -> np.ndarray:
    """Our implementation of MAGIC's diffusion (van Dijk et al., 2018), with its default settings.

    As in ``magic.MAGIC(knn=5, decay=1, t=3, n_pca=100)``: PCA of the log-normalised data;
    adaptive alpha-decay kernel ``K_ij = exp(-(d_ij / sigma_i) ** decay)`` with ``sigma_i`` the
    distance to the ``knn``-th neighbour, entries below 1e-4 set to zero (graphtools' threshold),
    symmetrised ``(K + K^T) / 2``, row-normalised into a Markov matrix ``P``; imputed data
    ``P^t X``. Kept beside the package's own row (:func:`magic_package`) as a check.
    """
    n_components = min(n_pca, log_observed.shape[1], log_observed.shape[0] - 1)
    pcs = PCA(n_components=n_components, random_state=seed).fit_transform(log_observed)
    squared = (pcs**2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * pcs @ pcs.T, 0.0))
    sigma = np.sort(distances, axis=1)[:, knn]  # column 0 is the cell itself
    kernel = np.exp(-((distances / np.maximum(sigma[:, None], 1e-12)) ** decay))
    kernel[kernel < 1e-4] = 0.0
    kernel = (kernel + kernel.T) / 2
    markov = kernel / kernel.sum(1, keepdims=True)
    imputed = log_observed.astype(np.float64)
    for _ in range(t):
        imputed = markov @ imputed
    return imputed.astype(np.float32)


def magic_package(log_observed: np.ndarray, seed: int = 0) -> np.ndarray:
    """MAGIC itself (``magic-impute``, van Dijk et al., 2018) with its default settings.

    ``magic.MAGIC()`` (knn 5, decay 1, t 3, 100 PCs, exact solver) on the log-normalised data.
    Its PyPI release pins ``pandas<2.1`` through ``scprep`` but runs with newer pandas; install
    it beside the benchmark's environment with ``pip install --no-deps magic-impute graphtools
    scprep tasklogger PyGSP Deprecated future decorator``.
    """
    import magic

    operator = magic.MAGIC(random_state=seed, verbose=0)
    return np.asarray(operator.fit_transform(log_observed), dtype=np.float32)


def scvi_denoised(counts, max_epochs: int, seed: int = 0) -> np.ndarray:
    """scVI's denoised expression (``get_normalized_expression``, library 1e4), log1p'd."""
    import anndata as ad
    import scvi

    scvi.settings.seed = seed
    adata = ad.AnnData(X=sp.csr_matrix(counts).astype(np.float32))
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_latent=10)
    model.train(max_epochs=max_epochs, enable_progress_bar=False, train_size=1.0)
    normalized = model.get_normalized_expression(library_size=TARGET_SUM, return_numpy=True)
    return np.log1p(np.asarray(normalized)).astype(np.float32)
