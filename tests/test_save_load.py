"""Saving and loading: atomic saves, and loads that explain what is wrong."""

import os

import numpy as np
import pytest
import torch

import schyena_tools as st
from schyena_tools.model._save_load import SAVE_FORMAT_VERSION


# ---------------------------------------------------------------- saving and loading
def test_save_refuses_to_overwrite_without_asking(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="already exists. Pass overwrite=True"):
        model.save(tmp_path / "m")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a[:, a.var_names[::-1]].copy(), "the same genes in another order"),
        (lambda a: a[:, 10:].copy(), r"\d+ genes where the model was set up with \d+ \(10 of them absent"),
    ],
)
def test_load_onto_other_genes_fails_at_load(trained, tmp_path, change, match):
    model, adata = trained
    model.save(tmp_path / "m")
    other = change(adata)
    with pytest.raises(ValueError, match=f"cannot load .*{match}.*load_query_data"):
        st.SCHyena.load(tmp_path / "m", adata=other)
    assert not any(key.startswith("_scvi") for key in other.uns)  # checked before registering
    assert st.SCHyena.load(tmp_path / "m", adata=adata).adata is adata  # the right genes load


def _fail_midway(monkeypatch):
    """Make the writer die after writing part of model.pt (as a full disk or a kill would)."""
    import scvi.model.base._base_model as base_model

    def partial_save(obj, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(base_model.torch, "save", partial_save)


def test_interrupted_save_keeps_the_old_model(trained, tmp_path, monkeypatch):
    model, adata = trained
    target = tmp_path / "m"
    model.save(target)
    (target / "notes.txt").write_text("the user's own file")
    before = model.get_latent_representation()
    with monkeypatch.context() as patch:
        _fail_midway(patch)
        with pytest.raises(OSError, match="No space left"):
            model.save(target, overwrite=True)
        with pytest.raises(OSError, match="No space left"):
            model.save(tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["m"], "no partial folder may be left behind"
    assert (target / "notes.txt").read_text() == "the user's own file"
    np.testing.assert_array_equal(st.SCHyena.load(target, adata=adata).get_latent_representation(), before)
    model.save(target, overwrite=True)  # a complete overwrite works and keeps the other files
    assert (target / "notes.txt").exists()


def test_load_explains_what_is_wrong(trained, tmp_path):
    model, adata = trained
    with pytest.raises(FileNotFoundError, match="no saved model at .*does not exist"):
        st.SCHyena.load(tmp_path / "never_saved", adata=adata)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.pt' is missing"):
        st.SCHyena.load(tmp_path / "empty", adata=adata)

    model.save(tmp_path / "m")
    model_file = tmp_path / "m" / "model.pt"
    complete = model_file.read_bytes()
    model_file.write_bytes(complete[: len(complete) // 2])
    with pytest.raises(ValueError, match="cannot be read .*truncated or corrupted"):
        st.SCHyena.load(tmp_path / "m", adata=adata)

    model_file.write_bytes(complete)
    saved = torch.load(model_file, weights_only=False)
    assert saved["attr_dict"]["schyena_tools_version_"] == st.__version__
    assert saved["attr_dict"]["save_format_version_"] == SAVE_FORMAT_VERSION
    saved["attr_dict"]["save_format_version_"] = 99
    saved["attr_dict"]["schyena_tools_version_"] = "9.0.0"
    torch.save(saved, model_file)
    with pytest.raises(ValueError, match=r"written by schyena-tools 9.0.0 in save format 99.*pip install -U"):
        st.SCHyena.load(tmp_path / "m", adata=adata)
    del saved["attr_dict"]["save_format_version_"]
    torch.save(saved, model_file)
    with pytest.raises(ValueError, match="has no save-format version"):
        st.SCHyena.load(tmp_path / "m", adata=adata)
    saved["attr_dict"]["registry_"]["model_name"] = "SCVI"
    torch.save(saved, model_file)
    with pytest.raises(ValueError, match="holds a SCVI model, not a SCHyena"):
        st.SCHyena.load(tmp_path / "m", adata=adata)
