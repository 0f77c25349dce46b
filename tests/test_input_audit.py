"""The input audit: every kind of input a pipeline produces, with its documented behaviour.

Matrix types, label columns, gene names, sizes and numeric arguments at and past their bounds.
Each case is either accepted with a documented result or refused with an error that names the
problem and the fix, before any work; each test fails if its guard or behaviour goes.
"""

import numpy as np
import pytest
import scipy.sparse as sp

import schyena_tools as st

from ._helpers import TINY, registered

QUICK = dict(max_epochs=1, batch_size=16, train_size=1.0, enable_progress_bar=False)


@pytest.fixture
def cells(zeisel_small):
    """40 real cells x 200 genes, all 7 classes."""
    return zeisel_small[:40, :200].copy()


def _embed(adata, **setup):
    st.SCHyena.setup_anndata(adata, **setup)
    model = st.SCHyena(adata, **TINY)
    model.train(**QUICK)
    return model, model.get_latent_representation(progress_bar=False)


# ---------------------------------------------------------------- matrix types
@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda X: sp.csc_matrix(X), id="csc"),
        pytest.param(lambda X: X.toarray(), id="dense float32"),
        pytest.param(lambda X: X.toarray().astype(np.int32), id="dense int32"),
        pytest.param(lambda X: sp.csr_matrix(X.astype(np.uint16)), id="csr uint16"),
        pytest.param(lambda X: sp.csr_matrix(X.astype(np.int64)), id="csr int64"),
        pytest.param(lambda X: X.toarray().astype(np.float16), id="dense float16"),
    ],
)
def test_every_matrix_type_embeds_like_csr_float32_and_trains(cells, convert):
    reference = cells.copy()
    reference.X = sp.csr_matrix(reference.X, dtype=np.float32)
    model, expected = _embed(reference)
    other = cells.copy()
    other.X = convert(cells.X)
    st.SCHyena.setup_anndata(other)
    np.testing.assert_allclose(
        model.get_latent_representation(other, progress_bar=False), expected, atol=1e-5
    )
    _, trained_on_it = _embed(other)  # and a model trains on it
    assert np.isfinite(trained_on_it).all()


def test_a_view_is_refused_with_the_fix_and_left_alone(cells):
    view = cells[:20]
    with pytest.raises(ValueError, match=r"adata is a view .*adata\[cells\]\.copy\(\)"):
        st.SCHyena.setup_anndata(view)
    assert view.is_view and not registered(cells)


# ---------------------------------------------------------------- label columns
def test_unused_categories_are_never_predicted(cells):
    cells.obs["cell_type"] = cells.obs["cell_type"].cat.add_categories(["never_seen_type"])
    model, _ = _embed(cells, labels_key="cell_type")
    model.train_classifier(enable_progress_bar=False)
    assert "never_seen_type" not in set(model.predict(progress_bar=False))


def test_a_class_with_one_cell_is_trained_on(cells):
    labels = cells.obs["cell_type"].astype(str).to_numpy()
    labels[0] = "singleton"
    cells.obs["cell_type"] = labels
    model, _ = _embed(cells, labels_key="cell_type")
    model.train_classifier(enable_progress_bar=False)
    probabilities = model.predict(soft=True, progress_bar=False)
    assert "singleton" in probabilities.columns  # a class of its own, not dropped
    assert probabilities.loc[cells.obs_names[0]].idxmax() == "singleton"  # the probe fits it


# ---------------------------------------------------------------- gene names
def _ids(n, version=False):
    return [f"ENSMUSG{i:011d}" + (f".{i % 5 + 1}" if version else "") for i in range(n)]


def test_ensembl_ids_against_a_symbol_vocabulary_name_the_fix(cells):
    model, _ = _embed(cells.copy())
    query = cells.copy()
    query.var_names = _ids(query.n_vars)
    with pytest.raises(
        ValueError, match=r"Ensembl gene IDs and the model's vocabulary is gene symbols.*gene_symbols"
    ):
        st.SCHyena.load_query_data(query, model)


def test_ensembl_version_suffixes_name_the_fix(cells):
    reference = cells.copy()
    reference.var_names = _ids(reference.n_vars)
    model, _ = _embed(reference)
    query = cells.copy()
    query.var_names = _ids(query.n_vars, version=True)
    with pytest.raises(ValueError, match=r"differ only in their version suffixes .*str\.replace"):
        st.SCHyena.load_query_data(query, model)
    query.var_names = query.var_names.str.replace(r"\.\d+$", "", regex=True)  # the fix named
    assert st.SCHyena.load_query_data(query, model).module.gene_index is None


def test_a_panel_sharing_few_genes_is_read_with_the_rest_missing(cells):
    model, _ = _embed(cells.copy())
    few = cells[:, :5].copy()
    with pytest.warns(UserWarning, match="195 of the 200 vocabulary genes are missing from the query"):
        query = st.SCHyena.load_query_data(few, model)
    assert query.get_latent_representation(progress_bar=False).shape == (few.n_obs, TINY["d_model"])


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("n_cells", [1, 2, 3])
def test_one_two_or_three_cells_train_and_embed_without_a_validation_split(cells, n_cells):
    _, embedding = _embed(cells[:n_cells].copy())
    assert embedding.shape == (n_cells, TINY["d_model"]) and np.isfinite(embedding).all()


def test_one_gene_is_an_error_naming_the_fix(cells):
    one = cells[:, :1].copy()
    st.SCHyena.setup_anndata(one)
    with pytest.raises(ValueError, match="needs at least 2; this model's vocabulary has 1.*full gene panel"):
        st.SCHyena(one, **TINY)


# ---------------------------------------------------------------- numbers at and past their bounds
@pytest.fixture(scope="module")
def model_for_bounds(_zeisel_small):
    adata = _zeisel_small[:40, :200].copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    model = st.SCHyena(adata, **TINY)
    model.train(**QUICK)
    return model


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        ("train", dict(mask_ratio=0.0), "mask_ratio must be between 0 and 1"),
        ("train", dict(mask_ratio=1.0), "mask_ratio must be between 0 and 1"),
        ("train", dict(zero_mask_ratio=1.0), r"zero_mask_ratio must be in \[0, 1\)"),
        ("train", dict(max_epochs=0), "max_epochs must be a positive integer"),
        ("train", dict(batch_size=0), "batch_size must be a positive integer"),
        ("train", dict(train_size=0.0), r"train_size must be in \(0, 1\]"),
        ("train", dict(train_size=1.5), r"train_size must be in \(0, 1\]"),
        ("train", dict(lr=1e-4), r"optimiser setting: pass plan_kwargs=\{'lr': 0.0001\}"),
        ("train_imputer", dict(dropout_ratio=1.0), "dropout_ratio must be between 0 and 1"),
        ("train_imputer", dict(zero_score_ratio=0.0), r"zero_score_ratio must be in \(0, 1\]"),
        ("train_imputer", dict(zero_score_ratio=1.5), r"zero_score_ratio must be in \(0, 1\]"),
        ("train_imputer", dict(max_epochs=0), "max_epochs must be a positive integer"),
        ("train_imputer", dict(eps=0.1), "plan_kwargs="),
        ("train_classifier", dict(max_epochs=-1), "max_epochs must be >= 0"),
        ("train_classifier", dict(max_epochs=1.5), "max_epochs must be an integer"),
        ("train_classifier", dict(probe_penalty=0), "probe_penalty must be > 0"),
        ("train_classifier", dict(train_size=0.0), r"train_size must be in \(0, 1\]"),
        ("train_classifier", dict(optimizer="SGD"), "plan_kwargs="),
        ("get_latent_representation", dict(batch_size=0), "batch_size must be a positive integer"),
        ("get_imputed_expression", dict(batch_size=-1), "batch_size must be a positive integer"),
    ],
)
def test_numbers_past_their_bounds_fail_before_any_work(model_for_bounds, method, kwargs, match):
    before = {k: v.clone() for k, v in model_for_bounds.module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        getattr(model_for_bounds, method)(**kwargs)
    after = model_for_bounds.module.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)  # nothing trained


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("train", dict(mask_ratio=0.99, zero_mask_ratio=0.0)),
        ("train_imputer", dict(dropout_ratio=0.01, zero_score_ratio=1.0)),
        ("train_classifier", dict(max_epochs=0)),
    ],
)
def test_numbers_at_their_bounds_are_accepted(model_for_bounds, method, kwargs):
    settings = {"enable_progress_bar": False} if method == "train_classifier" else dict(QUICK)
    getattr(model_for_bounds, method)(**settings, **kwargs)
