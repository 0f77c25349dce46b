"""File-backed AnnData: training, embedding, prediction and imputation in bounded memory."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import schyena_tools as st

from ._helpers import SMALL, TINY, unregistered_copy


# ---------------------------------------------------------------- large inputs
def test_embedding_a_file_backed_anndata_in_bounded_memory(trained, tmp_path, monkeypatch):
    """scvi-tools' loader reads minibatches from a backed sparse X; X is never loaded whole."""
    import tracemalloc

    import schyena_tools.validation._checks as validation

    # The input check reads a sample of rows from a backed matrix (1,000 by default, a third of
    # this small file); fewer here, so that the peak measures the minibatch reading.
    monkeypatch.setattr(validation, "BACKED_SAMPLE_ROWS", 100)

    model, adata = trained
    n_copies = 20  # 1,400 cells
    big = ad.AnnData(sp.vstack([adata.X] * n_copies).tocsr().astype(np.float32), var=adata.var[[]].copy())
    big.obs_names = [f"cell{i}" for i in range(big.n_obs)]
    big.obs["cell_type"] = pd.Categorical(np.tile(adata.obs["cell_type"].to_numpy(), n_copies))
    big.write_h5ad(tmp_path / "big.h5ad")
    expected = np.tile(model.get_latent_representation(), (n_copies, 1))

    backed = ad.read_h5ad(tmp_path / "big.h5ad", backed="r")
    tracemalloc.start()
    z = model.get_latent_representation(backed, batch_size=16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    backed.file.close()
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)
    X = big.X
    in_memory = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes  # 5.2 MB
    assert peak < in_memory / 3, f"peak {peak / 1e6:.2f} MB vs X in memory {in_memory / 1e6:.2f} MB"


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
