"""Shared fixtures: small slices of the bundled real brain data and tiny model settings."""

import pytest
import scvi

import schyena_tools as st

from ._helpers import SMALL, TINY, subsample


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0
    yield


@pytest.fixture(scope="session")
def _zeisel_small():
    return subsample(st.datasets.zeisel_brain(), 70, n_genes=600)


@pytest.fixture
def zeisel_small(_zeisel_small):
    """70 real Zeisel cells (all 7 classes) x the first 600 genes, raw counts, fresh copy."""
    return _zeisel_small.copy()


@pytest.fixture(scope="session")
def _zeisel_full_length():
    return subsample(st.datasets.zeisel_brain_all_genes(), 24)


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


@pytest.fixture(scope="session")
def _trained_once(_zeisel_small):
    """A tiny model pre-trained for one epoch, shared by tests that do not change it."""
    adata = _zeisel_small.copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = st.SCHyena(adata, **TINY)
    model.train(**SMALL)
    return model


@pytest.fixture
def trained(_trained_once, _zeisel_small):
    """The shared pre-trained model, and a fresh unregistered copy of its data."""
    return _trained_once, _zeisel_small.copy()


@pytest.fixture(scope="session")
def classifier_once(_zeisel_small):
    """A tiny model with a classifier trained for one epoch on 200 genes (shared, read-only)."""
    adata = _zeisel_small[:, :200].copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = st.SCHyena(adata, **TINY)
    model.train_classifier(**SMALL)
    return model
