"""Sharing through scvi.hub: a HubModel folder with a model card, loaded back offline."""

import json

import numpy as np
import pytest

import schyena_tools as st

hub = pytest.importorskip("scvi.hub")


def test_hub_folder_round_trip_through_scvi_hub(trained, tmp_path):
    model, adata = trained
    folder = tmp_path / "hub_model"
    metrics = {"10-NN agreement, major class": 0.9}
    hub_model = model.save_hub_folder(
        folder, training_data="70 Zeisel 2015 cells (tests)", metrics=metrics, training_code_url=None
    )
    assert isinstance(hub_model, hub.HubModel)
    assert {"model.pt", "README.md", "_scvi_required_metadata.json", "metrics.json"} <= {
        p.name for p in folder.iterdir()
    }
    metadata = json.loads((folder / "_scvi_required_metadata.json").read_text())
    assert metadata["model_cls_name"] == "SCHyena" and metadata["model_parent_module"] == "schyena_tools"
    card = (folder / "README.md").read_text()
    assert "scHyena" in card and "70 Zeisel 2015 cells" in card and "license: mit" in card
    assert "10-NN agreement" in card

    # a new HubModel from the folder alone, as after a download, loads an SCHyena back
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    reloaded = hub.HubModel(str(folder))
    reloaded.load_model(adata=adata, accelerator="cpu")
    assert isinstance(reloaded.model, st.SCHyena)
    np.testing.assert_allclose(
        reloaded.model.get_latent_representation(progress_bar=False),
        model.get_latent_representation(adata, progress_bar=False),
        atol=1e-6,
    )


def test_hub_folder_with_the_data_loads_without_an_anndata(trained, tmp_path):
    model, _ = trained
    model.save_hub_folder(tmp_path / "with_data", save_anndata=True)
    reloaded = hub.HubModel(str(tmp_path / "with_data"))
    reloaded.load_model(accelerator="cpu")
    assert reloaded.model.adata.n_obs == model.adata.n_obs


def test_hub_folder_refuses_to_overwrite(trained, tmp_path):
    model, _ = trained
    model.save_hub_folder(tmp_path / "m")
    with pytest.raises(ValueError, match="already exists"):
        model.save_hub_folder(tmp_path / "m")
