"""Model files and checkpoints are read as data only: a file crafted to run code is refused."""

import collections

import numpy as np
import pytest
import torch

import schyena_tools as st
from schyena_tools.model import convert_trusted_model_file

from ._helpers import TINY


class _RunsCode:
    """Unpickling this calls ``marker.write_text(...)``: stands for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).write_text, (self.marker, "code ran"))


def _craft(model_file, marker):
    saved = torch.load(model_file, weights_only=False)
    saved["attr_dict"]["payload_"] = _RunsCode(marker)
    torch.save(saved, model_file)


def test_a_saved_model_is_data_only(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    # PyTorch finds nothing in the file outside tensors and the allowed data types
    from schyena_tools.model._save_load import load_data_only

    saved = load_data_only(tmp_path / "m" / "model.pt")
    assert set(saved) >= {"model_state_dict", "attr_dict", "var_names"}
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    loaded = st.SCHyena.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(
        loaded.get_latent_representation(progress_bar=False),
        model.get_latent_representation(progress_bar=False),
        atol=1e-6,
    )


def test_a_crafted_model_file_is_refused_before_it_runs(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    marker = tmp_path / "marker.txt"
    _craft(tmp_path / "m" / "model.pt", marker)
    for load in (
        lambda: st.SCHyena.load(tmp_path / "m", adata=adata),
        lambda: st.SCHyena.check_saved_model(tmp_path / "m"),
        lambda: st.pretrained.load_model(tmp_path / "m", adata),
    ):
        with pytest.raises(
            ValueError, match="was refused: .*may be crafted to execute code.*Nothing in it has run"
        ):
            load()
        assert not marker.exists()
    # the guard is what stops it: plain unpickling runs the code
    torch.load(tmp_path / "m" / "model.pt", weights_only=False)
    assert marker.read_text() == "code ran"


def test_a_crafted_checkpoint_is_refused(zeisel_small, tmp_path):
    adata = zeisel_small[:20].copy()
    st.SCHyena.setup_anndata(adata)
    model = st.SCHyena(adata, **TINY)
    model.train(max_epochs=1, batch_size=10, enable_progress_bar=False, checkpoint_dir=tmp_path / "ckpt")
    (checkpoint,) = (tmp_path / "ckpt").glob("*.ckpt")
    marker = tmp_path / "marker.txt"
    content = torch.load(checkpoint, weights_only=False)
    content["payload"] = _RunsCode(marker)
    torch.save(content, checkpoint)
    fresh = st.SCHyena(adata, **TINY)
    with pytest.raises(ValueError, match="was refused"):
        fresh.train(max_epochs=2, batch_size=10, enable_progress_bar=False, resume_from=checkpoint)
    assert not marker.exists()


def test_files_of_version_0_1_are_explained_and_convertible(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    model_file = tmp_path / "m" / "model.pt"
    saved = torch.load(model_file, weights_only=False)
    registry = saved["attr_dict"]["registry_"]
    registry["field_registries"] = collections.defaultdict(dict, registry["field_registries"])
    torch.save(saved, model_file)  # what schyena-tools 0.1.0 wrote
    with pytest.raises(ValueError, match=r"written by schyena-tools 0.1.0 .*convert_trusted_model_file"):
        st.SCHyena.check_saved_model(tmp_path / "m")
    convert_trusted_model_file(tmp_path / "m")
    st.SCHyena.check_saved_model(tmp_path / "m")
    assert st.SCHyena.load(tmp_path / "m", adata=adata).gene_vocabulary.equals(model.gene_vocabulary)


def test_the_bundled_model_is_data_only():
    from schyena_tools.model._save_load import load_data_only
    from schyena_tools.pretrained import ZEISEL_BRAIN_MODEL_DIR

    assert "model_state_dict" in load_data_only(ZEISEL_BRAIN_MODEL_DIR / "model.pt")
