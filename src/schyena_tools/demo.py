"""The demo behind ``schyena-tools demo``: pre-train on bundled full-length brain data, embed, plot."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

#: Demo settings that finish in a few minutes on 2 CPU cores.
DEMO_SETTINGS = dict(d_model=32, n_layers=2, max_epochs=2, batch_size=8)


def embedding_label_agreement(embedding: np.ndarray, labels, n_neighbors: int = 10) -> float:
    """Fraction of cells whose ``n_neighbors`` nearest neighbours (Euclidean) mostly share their label.

    A quick, assumption-free read-out of how well an embedding separates known groups: 1.0 when
    every cell sits among its own kind, about the largest class fraction for a random embedding.
    """
    labels = np.asarray(labels)
    sq = (embedding**2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * embedding @ embedding.T
    np.fill_diagonal(dist, np.inf)
    neighbours = np.argsort(dist, axis=1)[:, :n_neighbors]
    votes = labels[neighbours]
    agree = [
        (np.unique(row, return_counts=True)[1].max() == (row == label).sum())
        for row, label in zip(votes, labels, strict=True)
    ]
    return float(np.mean(agree))


def run_demo(
    out_dir: str | Path = "schyena_demo_output",
    max_epochs: int = DEMO_SETTINGS["max_epochs"],
    d_model: int = DEMO_SETTINGS["d_model"],
    n_layers: int = DEMO_SETTINGS["n_layers"],
    batch_size: int = DEMO_SETTINGS["batch_size"],
    n_cells: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Pre-train scHyena on the bundled 550-cell x 19,972-gene Zeisel data and plot a UMAP.

    Writes into ``out_dir``: ``umap.png`` (coloured by the authors' subclass and by major
    class), ``zeisel_schyena.h5ad`` (the data with ``obsm["X_schyena"]`` and the UMAP) and
    ``model/`` (the trained model).

    Parameters
    ----------
    out_dir
        Output folder (created).
    max_epochs, d_model, n_layers, batch_size
        Training length and model size.
    n_cells
        Use only this many cells (for quick checks); default all 550.
    seed
        ``scvi.settings.seed``.
    progress
        Show the training progress bar.

    Returns
    -------
    A dict of what was measured: training and embedding times, final losses, and the
    neighbour label agreement of the embedding for subclass and major class.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import scvi

    from schyena_tools import SCHyena, datasets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = seed
    adata = datasets.zeisel_brain_all_genes()
    if n_cells is not None:
        rng = np.random.default_rng(seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()

    SCHyena.setup_anndata(adata, labels_key="cell_type")
    model = SCHyena(adata, d_model=d_model, n_layers=n_layers)
    print(model)
    start = time.perf_counter()
    model.train(max_epochs=max_epochs, batch_size=batch_size, enable_progress_bar=progress)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    adata.obsm["X_schyena"] = model.get_latent_representation(batch_size=batch_size)
    embed_seconds = time.perf_counter() - start

    sc.pp.neighbors(adata, use_rep="X_schyena", random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    sc.pl.umap(adata, color="major_class", ax=axes[0], show=False, title="scHyena embedding: major class")
    sc.pl.umap(adata, color="cell_type", ax=axes[1], show=False, title="author subclass")
    fig.suptitle(f"Zeisel 2015, {adata.n_obs} cells x {adata.n_vars} genes (all genes as tokens)")
    fig.tight_layout()
    fig.savefig(out / "umap.png", dpi=120)
    plt.close(fig)

    adata.write_h5ad(out / "zeisel_schyena.h5ad", compression="gzip")
    model.save(out / "model", overwrite=True)
    history = model.history
    summary = {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(train_seconds / max_epochs, 1),
        "embed_seconds": round(embed_seconds, 1),
        "embed_cells_per_second": round(adata.n_obs / embed_seconds, 1),
        "final_train_loss": float(history["train_loss"].iloc[-1, 0]),
        "final_validation_loss": float(history["validation_loss"].iloc[-1, 0])
        if "validation_loss" in history
        else None,
        "knn_agreement_major_class": embedding_label_agreement(
            adata.obsm["X_schyena"], adata.obs["major_class"]
        ),
        "knn_agreement_subclass": embedding_label_agreement(adata.obsm["X_schyena"], adata.obs["cell_type"]),
        "out_dir": str(out.resolve()),
    }
    for key, value in summary.items():
        print(f"{key:>28}: {value}")
    return summary
