"""Bad input fails early with an error naming the problem and the fix; the user's data is never changed."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import schyena_tools as st
from schyena_tools.validation import BACKED_SAMPLE_ROWS, CountsWarning, MissingKeyError, check_anndata

from ._helpers import SMALL, TINY, registered, setup_fails, unregistered_copy


# ---------------------------------------------------------------- values of the counts matrix
def test_nan_in_counts_is_an_error(zeisel_small):
    zeisel_small.X = zeisel_small.X.astype(np.float32)
    zeisel_small.X.data[3] = np.nan
    setup_fails(zeisel_small, ValueError, r"adata.X holds 1 NaN or infinite values")


def test_inf_in_dense_layer_is_an_error(zeisel_small):
    counts = zeisel_small.X.toarray().astype(np.float64)
    counts[5, 7] = np.inf
    zeisel_small.layers["counts"] = counts
    setup_fails(zeisel_small, ValueError, r"adata.layers\['counts'\] holds 1 NaN or infinite", layer="counts")


def test_scaled_values_are_an_error(zeisel_small):
    import scanpy as sc

    zeisel_small.layers["counts"] = zeisel_small.X.copy()
    sc.pp.log1p(zeisel_small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy: zero-centering densifies
        sc.pp.scale(zeisel_small)
    setup_fails(zeisel_small, ValueError, r"negative values .*looks scaled.*layer='counts'")


@pytest.mark.parametrize("logged", [False, True])
def test_normalised_or_logged_values_are_an_error(zeisel_small, logged):
    import scanpy as sc

    sc.pp.normalize_total(zeisel_small, target_sum=1e4)
    if logged:
        sc.pp.log1p(zeisel_small)
    match = "looks log-transformed" if logged else "looks library-size normalised"
    setup_fails(zeisel_small, ValueError, match)


def test_counts_in_adata_raw_are_offered_with_the_line_that_registers_them(zeisel_small):
    import scanpy as sc

    zeisel_small.raw = zeisel_small  # scanpy's layout: counts in .raw, processed values in .X
    sc.pp.normalize_total(zeisel_small, target_sum=1e4)
    sc.pp.log1p(zeisel_small)
    setup_fails(zeisel_small, ValueError, r"adata.raw holds raw counts.*adata.raw\[:, adata.var_names\].X")
    zeisel_small.layers["counts"] = zeisel_small.raw[:, zeisel_small.var_names].X  # the line works
    st.SCHyena.setup_anndata(zeisel_small, layer="counts")
    # .raw holding processed values too: not offered
    other = unregistered_copy(zeisel_small)
    other.raw = other
    setup_fails(other, ValueError, r"^(?!.*adata.raw holds).*looks log-transformed")


def test_fractional_counts_are_accepted_with_a_warning(zeisel_small):
    """Pseudo-alignment EM estimates: non-integer, non-negative, not normalised."""
    rng = np.random.default_rng(0)
    zeisel_small.X = zeisel_small.X.astype(np.float32)
    zeisel_small.X.data *= rng.uniform(0.5, 1.0, zeisel_small.X.nnz).astype(np.float32)
    with pytest.warns(CountsWarning, match="accepted as fractional counts"):
        st.SCHyena.setup_anndata(zeisel_small)
    assert registered(zeisel_small)


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
    setup_fails(zeisel_small, ValueError, r"1 gene names occur more than once.*var_names_make_unique")


@pytest.mark.parametrize(
    ("argument", "match"),
    [
        ("layer", r"layer='nope' is not in adata.layers \(present: \[\]\)"),
        ("labels_key", r"labels_key='nope' is not a column of adata.obs \(columns: \[.*'cell_type'"),
        ("batch_key", r"batch_key='nope' is not a column of adata.obs"),
    ],
)
def test_missing_keys_are_named_with_the_alternatives(zeisel_small, argument, match):
    setup_fails(zeisel_small, MissingKeyError, match, **{argument: "nope"})


def test_missing_labels_are_an_error_naming_the_fix(zeisel_small):
    labels = zeisel_small.obs["cell_type"].astype(object)
    labels.iloc[:5] = np.nan
    zeisel_small.obs["cell_type"] = labels
    setup_fails(zeisel_small, ValueError, r"5 missing values.*unlabeled_category", labels_key="cell_type")


@pytest.mark.parametrize(
    "labels",
    [
        lambda n: np.arange(n) % 3,  # integer cluster ids, as read from a CSV
        lambda n: pd.Categorical(np.arange(n) % 3),  # a categorical of integers
        lambda n: (np.arange(n) % 3).astype(float),
        lambda n: np.array(["a", 1] * (n // 2) + ["a"] * (n % 2), dtype=object),  # mixed
    ],
)
def test_labels_that_are_not_text_are_an_error_naming_the_fix(zeisel_small, labels):
    zeisel_small.obs["cluster"] = labels(zeisel_small.n_obs)
    setup_fails(zeisel_small, ValueError, r"not text labels|mixes text.*astype\(str\)", labels_key="cluster")
    # the fix the message gives works
    zeisel_small.obs["cluster"] = zeisel_small.obs["cluster"].astype(str)
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cluster")


@pytest.mark.parametrize("empty", ["cells", "genes"])
def test_empty_anndata_is_an_error(zeisel_small, empty):
    adata = zeisel_small[:0].copy() if empty == "cells" else zeisel_small[:, :0].copy()
    setup_fails(adata, ValueError, "the AnnData is empty")


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


# ---------------------------------------------------------------- hyper-parameters
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(d_model=0), r"d_model must be >= 1, got 0"),
        (dict(n_layers=-1), r"n_layers must be >= 1"),
        (dict(d_model=16.5), r"d_model must be an integer"),
        (dict(order=True), r"order must be an integer"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(target_sum=0), r"target_sum must be > 0"),
        (dict(filter_hidden_dim=float("nan")), r"filter_hidden_dim must be an integer"),
    ],
)
def test_bad_architecture_is_an_error_naming_the_argument(zeisel_small, kwargs, match):
    st.SCHyena.setup_anndata(zeisel_small)
    with pytest.raises(ValueError, match=match):
        st.SCHyena(zeisel_small, **{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("call", "kwargs", "match"),
    [
        ("train", dict(plan_kwargs={"lr": -1}), r"lr must be >= 0, got -1"),
        ("train", dict(plan_kwargs={"weight_decay": float("inf")}), r"weight_decay must be a number"),
        ("train_classifier", dict(lr=-1, max_epochs=1), r"lr must be >= 0"),
        ("train_classifier", dict(warmup_fraction=1.5, max_epochs=1), r"warmup_fraction must be in"),
        ("train_classifier", dict(head_lr_factor=-2, max_epochs=1), r"head_lr_factor must be >= 0"),
    ],
)
def test_bad_optimiser_settings_fail_before_any_work(zeisel_small, call, kwargs, match):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        getattr(model, call)(**kwargs, enable_progress_bar=False)
    for name, value in model.module.state_dict().items():  # not even the linear probe ran
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("n_cells", [1, 2, 9])
def test_too_few_cells_for_a_validation_split_is_an_error_naming_the_fix(zeisel_small, n_cells):
    few = zeisel_small[:n_cells].copy()
    st.SCHyena.setup_anndata(few)
    model = st.SCHyena(few, **TINY)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(
        ValueError, match=rf"leaves no validation cell among {n_cells} cells.*train_size=1.0.*10 cells"
    ):
        model.train(max_epochs=1, train_size=0.9, enable_progress_bar=False)
    for name, value in model.module.state_dict().items():  # not even the data-dependent start ran
        assert torch.equal(value, before[name]), name
    model.train(max_epochs=1, train_size=1.0, batch_size=2, enable_progress_bar=False)  # the fix works
