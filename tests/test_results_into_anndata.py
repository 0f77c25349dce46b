"""``key_added``: results written into the AnnData in one call, never over an existing key."""

import numpy as np
import pytest

import schyena_tools as st

from ._helpers import SMALL, TINY


@pytest.fixture
def classified(zeisel_small):
    adata = zeisel_small[:, :200].copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    model = st.SCHyena(adata, **TINY)
    model.train(**SMALL)
    model.train_classifier(enable_progress_bar=False)
    return model, adata


def test_each_result_goes_under_its_key(classified):
    model, adata = classified
    embedding = model.get_latent_representation(key_added="X_schyena", progress_bar=False)
    np.testing.assert_array_equal(adata.obsm["X_schyena"], embedding)
    labels, confidence = model.predict(return_confidence=True, key_added="schyena", progress_bar=False)
    assert list(adata.obs["schyena_prediction"].astype(str)) == list(labels)
    assert adata.obs["schyena_prediction"].dtype == "category"
    np.testing.assert_allclose(adata.obs["schyena_confidence"], confidence, rtol=1e-6)
    imputed = model.get_imputed_expression(return_numpy=True, key_added="schyena_imputed", progress_bar=False)
    np.testing.assert_array_equal(adata.layers["schyena_imputed"], imputed)
    assert adata.layers["schyena_imputed"].shape == adata.shape


def test_existing_keys_are_refused_before_any_work_unless_overwrite(classified, monkeypatch):
    model, adata = classified
    adata.obsm["X_schyena"] = np.zeros((adata.n_obs, 3))
    adata.obs["schyena_confidence"] = 0.0
    adata.layers["schyena_imputed"] = adata.X.copy()

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the key check")

    monkeypatch.setattr(type(model), "_inference_batches", no_work)
    with pytest.raises(ValueError, match=r"adata.obsm\['X_schyena'\] exists already; pass overwrite=True"):
        model.get_latent_representation(key_added="X_schyena")
    with pytest.raises(ValueError, match=r"obs\['schyena_confidence'\] exists already"):
        model.predict(key_added="schyena")
    with pytest.raises(ValueError, match=r"layers\['schyena_imputed'\] exists already"):
        model.get_imputed_expression(key_added="schyena_imputed")
    with pytest.raises(ValueError, match="cannot be combined with indices"):
        model.get_latent_representation(key_added="X_new", indices=[0, 1])
    with pytest.raises(ValueError, match="soft=True"):
        model.predict(key_added="new", soft=True)
    with pytest.raises(ValueError, match="one column per gene"):
        model.get_imputed_expression(key_added="new", gene_list=list(adata.var_names[:3]))
    assert adata.obsm["X_schyena"].shape[1] == 3  # untouched
    monkeypatch.undo()
    model.get_latent_representation(key_added="X_schyena", overwrite=True, progress_bar=False)
    assert adata.obsm["X_schyena"].shape[1] == TINY["d_model"]


def test_other_anndata_receives_its_results(classified, zeisel_small):
    model, _ = classified
    other = zeisel_small[:, :200].copy()
    st.SCHyena.setup_anndata(other, labels_key="cell_type")
    model.get_latent_representation(other, key_added="X_schyena", progress_bar=False)
    assert other.obsm["X_schyena"].shape == (other.n_obs, TINY["d_model"])
