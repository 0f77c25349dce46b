"""The bundled pre-trained model and loading saved models onto other gene panels."""

import numpy as np
import pytest

import schyena_tools as st


def test_bundled_model_card_is_complete():
    card = st.pretrained.zeisel_brain_model_card()
    assert card["settings"]["d_model"] == 32 and card["settings"]["n_layers"] == 2
    assert card["epochs_completed"] >= 1 and card["train_seconds"] > 0
    assert 0 < card["knn10_label_agreement_major_class"] <= 1
    assert card["size_mb"] < 20
    # the 550 pre-training cells, named as in the 3,005-cell release
    seen = card["zeisel_brain_cells_in_training"]
    assert len(seen) == 550
    assert set(seen) <= set(st.datasets.zeisel_brain().obs_names)


def test_bundled_model_embeds_another_gene_panel(zeisel_small):
    query = zeisel_small[:6].copy()  # 600 Zeisel genes, most of them in the vocabulary
    st.SCHyena.setup_anndata(query)
    model = st.pretrained.load_zeisel_brain_model(query)
    vocabulary = st.pretrained.load_model(st.pretrained.ZEISEL_BRAIN_MODEL_DIR).gene_vocabulary
    assert model.gene_vocabulary.equals(vocabulary)
    measured = int(query.var_names.isin(vocabulary).sum())
    assert 500 < measured <= 600
    assert model.n_vocabulary_genes_measured_ == measured  # the others get the missing token
    embedding = model.get_latent_representation()
    assert embedding.shape == (6, 32) and np.isfinite(embedding).all()
    # the user's AnnData gains no keys but scvi-tools' registration
    assert not any(key.startswith("schyena") for key in query.obs.columns)


def test_load_model_needs_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        st.pretrained.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        st.pretrained.load_model(tmp_path / "empty")


def test_load_model_without_data_returns_the_reference(trained_small, tmp_path):
    model, adata = trained_small
    model.save(tmp_path / "model")
    reference = st.pretrained.load_model(tmp_path / "model")
    assert list(reference.gene_vocabulary) == list(adata.var_names)
    np.testing.assert_allclose(
        reference.get_latent_representation(adata), model.get_latent_representation(adata), atol=1e-5
    )
