"""Shared fixtures: small slices of the bundled real brain data and tiny model settings."""

from pathlib import Path

import numpy as np
import pytest
import scvi

import schyena_tools as st

#: Network settings small enough for CI (2 CPU cores) yet with every component present.
TINY = dict(d_model=8, n_layers=1, filter_hidden_dim=8, mlp_ratio=1)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0
    yield


def _subsample(adata, n_cells, n_genes=None, seed=0):
    rng = np.random.default_rng(seed)
    # keep every label represented: take cells round-robin over labels
    order = np.concatenate(
        [
            rng.permutation(np.flatnonzero(adata.obs["cell_type"] == c))
            for c in adata.obs["cell_type"].cat.categories
        ]
    )
    labels = adata.obs["cell_type"].to_numpy()[order]
    rank = np.zeros(len(order), dtype=int)
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    chosen = order[np.argsort(rank, kind="stable")[:n_cells]]
    sub = adata[np.sort(chosen)]
    if n_genes is not None:
        sub = sub[:, :n_genes]
    sub = sub.copy()
    sub.obs["cell_type"] = sub.obs["cell_type"].cat.remove_unused_categories()
    return sub


@pytest.fixture(scope="session")
def _zeisel_small():
    return _subsample(st.datasets.zeisel_brain(), 70, n_genes=600)


@pytest.fixture
def zeisel_small(_zeisel_small):
    """70 real Zeisel cells (all 7 classes) x the first 600 genes, raw counts, fresh copy."""
    return _zeisel_small.copy()


@pytest.fixture(scope="session")
def _zeisel_full_length():
    return _subsample(st.datasets.zeisel_brain_all_genes(), 24)


@pytest.fixture
def zeisel_full_length(_zeisel_full_length):
    """24 real Zeisel cells x all 19,972 genes."""
    return _zeisel_full_length.copy()


@pytest.fixture
def trained_small(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train(max_epochs=2, batch_size=16, enable_progress_bar=False)
    return model, zeisel_small
