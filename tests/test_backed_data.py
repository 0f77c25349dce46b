"""File-backed AnnData: training, embedding, prediction and imputation in bounded memory."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import schyena_tools as st

from ._helpers import SMALL, TINY, unregistered_copy


# ---------------------------------------------------------------- large inputs
def test_embedding_a_file_backed_anndata_in_bounded_memory(trained, tmp_path, monkeypatch):
    """scvi-tools' loader reads minibatches from a backed sparse X; X is never loaded whole.

    Measured at two sizes: the peak of Python-side allocations (tracemalloc sees numpy arrays,
    e.g. the minibatch reads and SciPy's FFT buffers where that back-end is chosen; not torch's
    own allocations) stays flat when the number of cells triples, and below the size of X.
    """
    import tracemalloc

    import schyena_tools.validation._checks as validation

    # The input check reads a sample of rows from a backed matrix (1,000 by default); fewer
    # here, so that the peak measures the minibatch reading.
    monkeypatch.setattr(validation, "BACKED_SAMPLE_ROWS", 100)
    model, adata = trained
    single = model.get_latent_representation(progress_bar=False)
    peaks, sizes = {}, {}
    for n_copies in (20, 60):  # 1,400 and 4,200 cells
        X = sp.vstack([adata.X] * n_copies).tocsr().astype(np.float32)
        big = ad.AnnData(X, var=adata.var[[]].copy())
        big.obs_names = [f"cell{i}" for i in range(big.n_obs)]
        big.obs["cell_type"] = pd.Categorical(np.tile(adata.obs["cell_type"].to_numpy(), n_copies))
        big.write_h5ad(tmp_path / f"big{n_copies}.h5ad")
        backed = ad.read_h5ad(tmp_path / f"big{n_copies}.h5ad", backed="r")
        tracemalloc.start()
        z = model.get_latent_representation(backed, batch_size=16, progress_bar=False)
        _, peaks[n_copies] = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        backed.file.close()
        np.testing.assert_allclose(z, np.tile(single, (n_copies, 1)), rtol=1e-4, atol=1e-5)
        sizes[n_copies] = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    assert peaks[60] < 1.3 * peaks[20] + 1e6, f"peaks {peaks} grow with the cells (X: {sizes})"
    assert peaks[60] < sizes[60], f"peak {peaks[60] / 1e6:.2f} MB vs X in memory {sizes[60] / 1e6:.2f} MB"


def test_training_on_a_file_backed_anndata(zeisel_small, tmp_path):
    """Out-of-core pre-training: minibatches are read from the h5ad file; X is never loaded whole."""
    zeisel_small.X = zeisel_small.X.astype(np.float32)
    zeisel_small.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    st.SCHyena.setup_anndata(backed)
    model = st.SCHyena(backed, **TINY)
    before = model.module.encoder.gene_embedding.weight.detach().clone()
    model.train(**SMALL)
    assert backed.isbacked and "train_loss" in model.history
    assert not torch.equal(before, model.module.encoder.gene_embedding.weight.detach())
    assert np.isfinite(model.get_latent_representation()).all()
    backed.file.close()


def test_prediction_and_imputation_of_a_file_backed_anndata(classifier_once, tmp_path, monkeypatch):
    """predict and get_imputed_expression read a backed X in minibatches, as embedding does."""
    import tracemalloc

    import schyena_tools.validation._checks as validation

    monkeypatch.setattr(validation, "BACKED_SAMPLE_ROWS", 100)
    model = classifier_once
    adata = unregistered_copy(model.adata)
    n_copies = 60  # 4,200 cells x 200 genes
    big = ad.AnnData(sp.vstack([adata.X] * n_copies).tocsr().astype(np.float32), var=adata.var[[]].copy())
    big.obs_names = [f"cell{i}" for i in range(big.n_obs)]
    big.obs["cell_type"] = pd.Categorical(np.tile(adata.obs["cell_type"].to_numpy(), n_copies))
    big.write_h5ad(tmp_path / "big.h5ad")
    genes = list(adata.var_names[:5])
    expected_labels = np.tile(model.predict(adata), n_copies)
    expected_imputed = np.tile(
        model.get_imputed_expression(adata, gene_list=genes, return_numpy=True), (n_copies, 1)
    )

    backed = ad.read_h5ad(tmp_path / "big.h5ad", backed="r")
    tracemalloc.start()
    labels = model.predict(backed, batch_size=16)
    imputed = model.get_imputed_expression(backed, gene_list=genes, batch_size=16, return_numpy=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    backed.file.close()
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(imputed, expected_imputed, rtol=1e-4, atol=1e-5)
    X = big.X
    in_memory = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    assert peak < in_memory / 3, f"peak {peak / 1e6:.2f} MB vs X in memory {in_memory / 1e6:.2f} MB"


def test_imputation_into_a_file_in_bounded_memory(trained, tmp_path, monkeypatch):
    """out_file: the imputed matrix goes to disk chunk by chunk; memory holds one chunk."""
    import tracemalloc

    import schyena_tools.validation._checks as validation

    monkeypatch.setattr(validation, "BACKED_SAMPLE_ROWS", 100)
    model, adata = trained
    n_copies = 40  # 2,800 cells x 600 genes: 6.7 MB of float32 results
    big = ad.AnnData(sp.vstack([adata.X] * n_copies).tocsr().astype(np.float32), var=adata.var[[]].copy())
    big.obs_names = [f"cell{i}" for i in range(big.n_obs)]
    big.obs["cell_type"] = pd.Categorical(np.tile(adata.obs["cell_type"].to_numpy(), n_copies))
    big.write_h5ad(tmp_path / "big.h5ad")
    expected = np.tile(model.get_imputed_expression(return_numpy=True, progress_bar=False), (n_copies, 1))

    backed = ad.read_h5ad(tmp_path / "big.h5ad", backed="r")
    tracemalloc.start()
    result = model.get_imputed_expression(
        backed, batch_size=16, out_file=tmp_path / "imputed.h5ad", progress_bar=False
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.isbacked and result.shape == big.shape
    assert list(result.obs_names) == list(big.obs_names) and list(result.var_names) == list(big.var_names)
    np.testing.assert_allclose(result.X[:], expected, rtol=1e-5, atol=1e-6)
    assert peak < expected.nbytes / 3, f"peak {peak / 1e6:.2f} MB vs result {expected.nbytes / 1e6:.2f} MB"
    result.file.close()
    with pytest.raises(ValueError, match="exists already; pass overwrite=True"):
        model.get_imputed_expression(backed, out_file=tmp_path / "imputed.h5ad")
    with pytest.raises(ValueError, match="must end in .h5ad"):
        model.get_imputed_expression(backed, out_file=tmp_path / "imputed.csv")
    with pytest.raises(ValueError, match="pass one of them"):
        model.get_imputed_expression(backed, out_file=tmp_path / "other.h5ad", key_added="x")
    backed.file.close()


def test_a_failed_imputation_into_a_file_leaves_no_file(trained, tmp_path, monkeypatch):
    model, adata = trained
    st.SCHyena.setup_anndata(adata)

    def fails(*args, **kwargs):
        yield np.zeros((2, adata.n_vars), np.float32)
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(model), "_imputed_chunks", fails)
    with pytest.raises(RuntimeError, match="disk full"):
        model.get_imputed_expression(adata, out_file=tmp_path / "imputed.h5ad")
    assert list(tmp_path.iterdir()) == []
