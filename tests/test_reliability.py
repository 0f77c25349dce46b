"""Bad input gets a clear error before any work; the user's data and saved models are never lost.

Every guard here has a test that fails if the guard is removed: the bad input would otherwise be
registered (``_scvi_uuid`` in ``adata.uns``), embedded, or fail later with another message.
"""

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import schyena_tools as st
from schyena_tools.data import (
    BACKED_SAMPLE_ROWS,
    CountsWarning,
    MissingKeyError,
    check_anndata,
    write_results,
)
from schyena_tools.model._model import SAVE_FORMAT_VERSION

from .conftest import TINY

SMALL = dict(max_epochs=1, batch_size=16, enable_progress_bar=False)


@pytest.fixture(scope="module")
def _trained_once(_zeisel_small):
    adata = _zeisel_small.copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = st.SCHyena(adata, **TINY)
    model.train(**SMALL)
    return model


@pytest.fixture
def trained(_trained_once, _zeisel_small):
    """A model trained once for this module, and a fresh unregistered copy of its data."""
    return _trained_once, _zeisel_small.copy()


def _registered(adata) -> bool:
    return "_scvi_uuid" in adata.uns


def _setup_fails(adata, error, match, **setup_kwargs):
    with pytest.raises(error, match=match):
        st.SCHyena.setup_anndata(adata, **setup_kwargs)
    assert not _registered(adata), "the check must run before anything is registered"


# ---------------------------------------------------------------- values of the counts matrix
def test_nan_in_counts_is_an_error(zeisel_small):
    zeisel_small.X = zeisel_small.X.astype(np.float32)
    zeisel_small.X.data[3] = np.nan
    _setup_fails(zeisel_small, ValueError, r"adata.X holds 1 NaN or infinite values")


def test_inf_in_dense_layer_is_an_error(zeisel_small):
    counts = zeisel_small.X.toarray().astype(np.float64)
    counts[5, 7] = np.inf
    zeisel_small.layers["counts"] = counts
    _setup_fails(
        zeisel_small, ValueError, r"adata.layers\['counts'\] holds 1 NaN or infinite", layer="counts"
    )


def test_scaled_values_are_an_error(zeisel_small):
    import scanpy as sc

    zeisel_small.layers["counts"] = zeisel_small.X.copy()
    sc.pp.log1p(zeisel_small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy: zero-centering densifies
        sc.pp.scale(zeisel_small)
    _setup_fails(zeisel_small, ValueError, r"negative values .*looks scaled.*layer='counts'")


@pytest.mark.parametrize("logged", [False, True])
def test_normalised_or_logged_values_are_an_error(zeisel_small, logged):
    import scanpy as sc

    sc.pp.normalize_total(zeisel_small, target_sum=1e4)
    if logged:
        sc.pp.log1p(zeisel_small)
    match = "looks log-transformed" if logged else "looks library-size normalised"
    _setup_fails(zeisel_small, ValueError, match)


def test_fractional_counts_are_accepted_with_a_warning(zeisel_small):
    """Pseudo-alignment EM estimates: non-integer, non-negative, not normalised."""
    rng = np.random.default_rng(0)
    zeisel_small.X = zeisel_small.X.astype(np.float32)
    zeisel_small.X.data *= rng.uniform(0.5, 1.0, zeisel_small.X.nnz).astype(np.float32)
    with pytest.warns(CountsWarning, match="accepted as fractional counts"):
        st.SCHyena.setup_anndata(zeisel_small)
    assert _registered(zeisel_small)


def test_cells_without_counts_are_accepted_with_a_warning(zeisel_small):
    counts = zeisel_small.X.tolil()
    counts[[2, 9], :] = 0
    zeisel_small.X = counts.tocsr()
    with pytest.warns(CountsWarning, match=r"2 cells of adata.X have no counts.*filter_cells"):
        st.SCHyena.setup_anndata(zeisel_small)


def test_dense_float64_is_accepted_silently_and_embeds_like_sparse(trained):
    model, adata = trained
    dense = adata.copy()
    dense.X = adata.X.toarray().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CountsWarning)
        z_dense = model.get_latent_representation(dense)
    np.testing.assert_allclose(z_dense, model.get_latent_representation(), rtol=1e-5, atol=1e-6)


def test_sparse_check_reads_stored_values_only():
    """A 10^6 x 20,000 sparse matrix (80 GB if dense) with 3 stored values is checked at once."""
    X = sp.csr_matrix(
        ([1.0, 2.0, np.nan], ([0, 500_000, 999_999], [0, 1, 19_999])), shape=(1_000_000, 20_000)
    )
    adata = ad.AnnData(X)
    with pytest.raises(ValueError, match="1 NaN"):
        check_anndata(adata)


def test_backed_matrix_is_checked_on_a_sample_of_rows(tmp_path, zeisel_small):
    n_cells = BACKED_SAMPLE_ROWS + 500
    X = sp.vstack([zeisel_small.X] * (n_cells // zeisel_small.n_obs + 1)).tocsr()[:n_cells]
    big = ad.AnnData(X, var=zeisel_small.var[[]].copy())
    big.obs_names = [f"cell{i}" for i in range(n_cells)]
    big.write_h5ad(tmp_path / "big.h5ad")
    backed = ad.read_h5ad(tmp_path / "big.h5ad", backed="r")
    summary = check_anndata(backed)
    assert summary.sampled and summary.n_cells_checked == BACKED_SAMPLE_ROWS
    backed.file.close()


# ---------------------------------------------------------------- structure and keys
def test_duplicate_gene_names_are_an_error(zeisel_small):
    names = zeisel_small.var_names.to_list()
    names[10] = names[3]
    zeisel_small.var_names = names
    _setup_fails(zeisel_small, ValueError, r"1 gene names occur more than once.*var_names_make_unique")


@pytest.mark.parametrize(
    ("argument", "match"),
    [
        ("layer", r"layer='nope' is not in adata.layers \(present: \[\]\)"),
        ("labels_key", r"labels_key='nope' is not a column of adata.obs \(columns: \[.*'cell_type'"),
        ("batch_key", r"batch_key='nope' is not a column of adata.obs"),
    ],
)
def test_missing_keys_are_named_with_the_alternatives(zeisel_small, argument, match):
    _setup_fails(zeisel_small, MissingKeyError, match, **{argument: "nope"})


def test_missing_labels_are_an_error_naming_the_fix(zeisel_small):
    labels = zeisel_small.obs["cell_type"].astype(object)
    labels.iloc[:5] = np.nan
    zeisel_small.obs["cell_type"] = labels
    _setup_fails(zeisel_small, ValueError, r"5 missing values.*unlabeled_category", labels_key="cell_type")


@pytest.mark.parametrize("empty", ["cells", "genes"])
def test_empty_anndata_is_an_error(zeisel_small, empty):
    adata = zeisel_small[:0].copy() if empty == "cells" else zeisel_small[:, :0].copy()
    _setup_fails(adata, ValueError, "the AnnData is empty")


def test_data_changed_after_setup_is_an_error(trained):
    model, adata = trained
    changed = adata.copy()
    model.get_latent_representation(changed)  # registers the copy like the model's data
    changed._inplace_subset_var(np.arange(500))
    with pytest.raises(ValueError, match="500 genes where the model was set up with 600"):
        model.get_latent_representation(changed)

    permuted = adata[:, adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="the same genes in another order"):
        model.get_latent_representation(permuted)

    import scanpy as sc

    model.get_latent_representation(adata)
    sc.pp.normalize_total(adata)  # in place, after registration
    with pytest.raises(ValueError, match="looks library-size normalised"):
        model.get_latent_representation(adata)


def test_fewer_cells_after_setup_are_fine(trained):
    """Cells (not genes) may be subset after setup: the rows stay consistent with obs."""
    model, adata = trained
    full = model.get_latent_representation(adata)
    adata._inplace_subset_obs(np.arange(20))
    np.testing.assert_allclose(model.get_latent_representation(adata), full[:20], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5])
def test_bad_batch_size_is_an_error(trained, batch_size):
    model, _ = trained
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.get_latent_representation(batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.train(max_epochs=1, batch_size=batch_size)


# ---------------------------------------------------------------- classifier labels
def _labels_model(adata, labels):
    adata.obs["label"] = pd.Categorical(labels)
    st.SCHyena.setup_anndata(adata, labels_key="label")
    return st.SCHyena(adata, **TINY)


def test_classifier_needs_labelled_cells(zeisel_small):
    model = _labels_model(zeisel_small, ["Unknown"] * zeisel_small.n_obs)
    # with no labelled cell there is no class, hence no head: the error says what to label
    with pytest.raises(ValueError, match="holds no category other than the unlabeled category 'Unknown'"):
        model.train_classifier(**SMALL)


def test_classifier_needs_a_labels_key(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(ValueError, match="train_classifier needs cell-type labels.*labels_key="):
        model.train_classifier(**SMALL)


def test_classifier_needs_two_classes(zeisel_small):
    model = _labels_model(zeisel_small, ["neuron"] * 50 + ["Unknown"] * (zeisel_small.n_obs - 50))
    with pytest.raises(ValueError, match="single labelled class \\('neuron'\\)"):
        model.train_classifier(**SMALL)


# ---------------------------------------------------------------- nothing lost
def _snapshot(adata):
    X = adata.X
    return {
        "X": (X.data.tobytes(), X.indices.tobytes(), X.indptr.tobytes(), X.dtype, X.shape),
        "layers": {k: v.data.tobytes() for k, v in adata.layers.items()},
        "var": adata.var.copy(),
        "var_names": adata.var_names.copy(),
        "obs": adata.obs.copy(),
        "obsm": set(adata.obsm.keys()),
    }


def test_user_data_is_never_modified(zeisel_small, tmp_path):
    adata = zeisel_small
    adata.layers["counts"] = adata.X.copy()
    before = _snapshot(adata)
    st.SCHyena.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model = st.SCHyena(adata, **TINY)
    model.train(**SMALL)
    model.get_latent_representation()
    model.save(tmp_path / "model")
    after = _snapshot(adata)
    assert after["X"] == before["X"] and after["layers"] == before["layers"]
    pd.testing.assert_frame_equal(after["var"], before["var"])
    assert after["var_names"].equals(before["var_names"]) and after["obsm"] == before["obsm"]
    # The registration the user asked for: scvi-tools' code columns and uuids, nothing else.
    assert set(after["obs"].columns) - set(before["obs"].columns) == {"_scvi_batch", "_scvi_labels"}
    pd.testing.assert_frame_equal(after["obs"][before["obs"].columns], before["obs"])
    assert {k for k in adata.uns if k.startswith("_scvi")} == {"_scvi_uuid", "_scvi_manager_uuid"}


def test_write_results_never_overwrites_silently(zeisel_small):
    z = np.ones((zeisel_small.n_obs, 3), dtype=np.float32)
    write_results(zeisel_small, "X_schyena", z)
    np.testing.assert_array_equal(zeisel_small.obsm["X_schyena"], z)
    with pytest.raises(ValueError, match=r"adata.obsm\['X_schyena'\] already exists.*overwrite=True"):
        write_results(zeisel_small, "X_schyena", z * 2)
    np.testing.assert_array_equal(zeisel_small.obsm["X_schyena"], z)
    write_results(zeisel_small, "X_schyena", z * 2, overwrite=True)
    assert zeisel_small.obsm["X_schyena"][0, 0] == 2
    write_results(zeisel_small, "prediction", np.array(["a"] * zeisel_small.n_obs))
    with pytest.raises(ValueError, match=r"adata.obs\['cell_type'\] already exists"):
        write_results(zeisel_small, "cell_type", np.zeros(zeisel_small.n_obs))
    with pytest.raises(ValueError, match="one row .*per cell"):
        write_results(zeisel_small, "short", np.zeros(3))


# ---------------------------------------------------------------- saving and loading
def test_save_refuses_to_overwrite_without_asking(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="already exists. Pass overwrite=True"):
        model.save(tmp_path / "m")


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


# ---------------------------------------------------------------- resumable training
class _Crash(Callback):
    """Stop training with an error when an epoch starts, as a killed job would."""

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


class _CountEpochs(Callback):
    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


def test_interrupted_training_resumes_losing_at_most_one_epoch(zeisel_small, tmp_path):
    zeisel_small = zeisel_small[:, :200].copy()  # smaller: four trainings
    st.SCHyena.setup_anndata(zeisel_small)
    kwargs = dict(max_epochs=4, batch_size=16, enable_progress_bar=False, checkpoint_dir=tmp_path / "ckpt")
    scvi.settings.seed = 0
    crashed = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train(callbacks=[_Crash(at_epoch=2)], **kwargs)
    # Epochs 0 and 1 completed: the newest (only) checkpoint holds exactly the weights after epoch 1.
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["pretrain-epoch00001.ckpt"]
    checkpoint = torch.load(tmp_path / "ckpt" / "pretrain-epoch00001.ckpt", weights_only=False)
    for name, value in crashed.module.state_dict().items():
        torch.testing.assert_close(checkpoint["state_dict"][f"module.{name}"], value.cpu(), rtol=0, atol=0)
    losses_before_crash = checkpoint["schyena_history"]["train_loss"][1]["train_loss"]
    assert len(losses_before_crash) == 2

    scvi.settings.seed = 0
    resumed = st.SCHyena(zeisel_small, **TINY)
    counter = _CountEpochs()
    resumed.train(resume_from=tmp_path / "ckpt", callbacks=[counter], **kwargs)
    assert counter.epochs == [2, 3], "only the epochs after the checkpoint are trained"
    history = resumed.history["train_loss"]["train_loss"].to_numpy(dtype=float)
    assert len(history) == 4
    np.testing.assert_allclose(history[:2], losses_before_crash)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["pretrain-epoch00003.ckpt"]


def test_resume_checks_the_checkpoint(zeisel_small, tmp_path):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(FileNotFoundError, match="resume_from=.* does not exist"):
        model.train(max_epochs=2, resume_from=tmp_path / "nothing.ckpt")
    with pytest.raises(FileNotFoundError, match="holds no 'pretrain' checkpoint"):
        model.train(max_epochs=2, resume_from=tmp_path)
    model.train(max_epochs=2, train_size=1.0, checkpoint_dir=tmp_path, **{"enable_progress_bar": False})
    (path,) = tmp_path.glob("*.ckpt")
    with pytest.raises(ValueError, match="already trained 2 epochs; max_epochs=2"):
        model.train(max_epochs=2, resume_from=path)
    other = st.SCHyena(zeisel_small, **{**TINY, "d_model": 12})
    with pytest.raises(ValueError, match="does not fit this model"):
        other.train(max_epochs=3, resume_from=path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="is unreadable"):
        model.train(max_epochs=3, resume_from=path)


# ---------------------------------------------------------------- large inputs
def test_embedding_a_file_backed_anndata_in_bounded_memory(trained, tmp_path, monkeypatch):
    """scvi-tools' loader reads minibatches from a backed sparse X; X is never loaded whole."""
    import tracemalloc

    import schyena_tools.data._validation as validation

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


def test_prediction_and_imputation_of_a_file_backed_anndata(_classifier_once, tmp_path, monkeypatch):
    """predict and get_imputed_expression read a backed X in minibatches, as embedding does."""
    import tracemalloc

    import schyena_tools.data._validation as validation

    monkeypatch.setattr(validation, "BACKED_SAMPLE_ROWS", 100)
    model = _classifier_once
    adata = _unregistered_copy(model.adata)
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


# ---------------------------------------------------------------- fine-tuning and query guards
def _unregistered_copy(adata):
    copy = adata.copy()
    for key in [k for k in copy.uns if k.startswith("_scvi")]:
        del copy.uns[key]
    copy.obs = copy.obs.drop(columns=[c for c in copy.obs if c.startswith("_scvi")])
    return copy


@pytest.fixture(scope="module")
def _classifier_once(_zeisel_small):
    adata = _zeisel_small[:, :200].copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = st.SCHyena(adata, **TINY)
    model.train_classifier(**SMALL)
    return model


def test_prediction_guards(_classifier_once):
    model = _classifier_once
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.predict(batch_size=0)
    # A label the reference never saw: an error naming it, not a silent re-coding.
    query = _unregistered_copy(model.adata)
    query.obs["cell_type"] = query.obs["cell_type"].cat.add_categories(["alien"])
    query.obs.loc[query.obs_names[:3], "cell_type"] = "alien"
    with pytest.raises(ValueError, match="alien"):
        model.predict(query)


def test_query_without_shared_genes_is_an_error(_classifier_once):
    model = _classifier_once
    query = _unregistered_copy(model.adata)
    query.var_names = [f"unrelated{i}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="none of the query's 200 genes .* is in the reference vocabulary"):
        st.SCHyena.load_query_data(query, model)
    assert not _registered(query)
