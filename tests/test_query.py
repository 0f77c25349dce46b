"""Applying a trained model to data with another gene panel (load_query_data)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import schyena_tools as st
from schyena_tools.module import log_normalize

from ._helpers import TINY

QUIET = dict(enable_progress_bar=False)


def _fresh(adata):
    """A copy without scvi-tools' registration, as a user's new dataset would be."""
    adata = adata.copy()
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        adata.uns.pop(key, None)
    adata.obs = adata.obs[[c for c in adata.obs.columns if not c.startswith("_scvi")]].copy()
    return adata


@pytest.fixture
def classifier_small(trained_small):
    model, adata = trained_small
    model.train_classifier(max_epochs=1, batch_size=16, **QUIET)
    return model, adata


def test_shuffled_panel_gives_identical_outputs(classifier_small):
    reference, adata = classifier_small
    order = np.random.default_rng(0).permutation(adata.n_vars)
    query = _fresh(adata)[:, order].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same genes: nothing dropped, nothing to warn about
        model = st.SCHyena.load_query_data(query, reference)
    assert list(model.gene_vocabulary) == list(reference.gene_vocabulary)
    np.testing.assert_array_equal(model.module.gene_index.numpy(), np.argsort(order))
    np.testing.assert_allclose(
        model.get_latent_representation(), reference.get_latent_representation(), rtol=1e-4, atol=1e-5
    )
    # same label categories: the trained head is transferred and predicts the same
    assert model.is_classifier_trained_
    np.testing.assert_array_equal(model.predict(), reference.predict())
    imputed = model.get_imputed_expression()
    assert list(imputed.columns) == list(query.var_names)
    expected = reference.get_imputed_expression()[query.var_names]
    np.testing.assert_allclose(imputed.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-5)


def test_partial_panel_with_extra_genes(trained_small):
    reference, adata = trained_small
    query = _fresh(adata)[:, 100:].copy()  # 100 vocabulary genes missing
    extra = pd.DataFrame(
        np.random.default_rng(0).poisson(1.0, (query.n_obs, 5)),
        index=query.obs_names,
        columns=[f"NotInVocab{i}" for i in range(5)],
    )
    query = type(query)(
        X=np.hstack([query.X.toarray(), extra.to_numpy()]).astype(np.float32),
        obs=query.obs,
        var=pd.DataFrame(index=list(query.var_names) + list(extra.columns)),
    )
    with pytest.warns(
        UserWarning, match="5 of the query's 505 genes are not in the reference vocabulary"
    ) as record:
        model = st.SCHyena.load_query_data(query, reference)
    assert sum("reference vocabulary" in str(w.message) for w in record) == 1
    gene_index = model.module.gene_index.numpy()
    assert (gene_index[:100] == -1).all()
    np.testing.assert_array_equal(gene_index[100:], np.arange(500))
    # encoder weights are the reference's
    for key, value in reference.module.encoder.state_dict().items():
        assert torch.equal(model.module.encoder.state_dict()[key], value), key
    z = model.get_latent_representation()
    assert z.shape == (query.n_obs, TINY["d_model"]) and np.isfinite(z).all()
    imputed = model.get_imputed_expression(all_genes=False)
    assert list(imputed.columns) == list(query.var_names[:500])  # genes outside the vocabulary dropped
    # default (all_genes): one column per query gene, in its order; genes outside the vocabulary
    # keep their observed log-normalised values, imputed genes equal the vocabulary-only output.
    full = model.get_imputed_expression()
    assert list(full.columns) == list(query.var_names)
    # the documented line works on this panel (it failed with a shape error before)
    query.layers["schyena_imputed"] = model.get_imputed_expression(return_numpy=True)
    np.testing.assert_array_equal(query.layers["schyena_imputed"], full.to_numpy())
    observed = log_normalize(torch.as_tensor(query.X, dtype=torch.float32), model.module.target_sum).numpy()
    np.testing.assert_allclose(full[list(extra.columns)].to_numpy(), observed[:, -5:], rtol=1e-6)
    np.testing.assert_allclose(full[imputed.columns].to_numpy(), imputed.to_numpy())
    assert (~query.var_names.isin(model.gene_vocabulary)).sum() == 5
    with pytest.raises(ValueError, match="either gene_list or all_genes"):
        model.get_imputed_expression(all_genes=True, gene_list=["NotInVocab0"])


def test_missing_genes_are_never_masked_or_scored(trained_small):
    reference, adata = trained_small
    query = _fresh(adata)[:, 100:].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = st.SCHyena.load_query_data(query, reference)
    module = model.module
    counts = torch.as_tensor(query.X.toarray(), dtype=torch.float32)
    missing = module.gene_index < 0

    out = module.inference(counts, mask_ratio=0.9, zero_mask_ratio=0.9)
    assert out["missing"].equal(missing) and not out["masked"][:, missing].any()
    loss = module.masked_expression_loss(out).loss
    for name in ("predicted_expression", "cell_predicted_expression"):
        out[name] = out[name].clone()
        out[name][:, missing] = 1e6  # a wild prediction where nothing was measured...
    assert torch.allclose(module.masked_expression_loss(out).loss, loss)  # ...costs nothing

    torch.manual_seed(0)
    out = module.inference(counts, dropout_ratio=0.9)
    assert not out["dropped"][:, missing].any() and not out["masked"][:, missing].any()
    loss = module.imputation_loss(out).loss
    out["predicted_expression"] = out["predicted_expression"].clone()
    out["predicted_expression"][:, missing] = 1e6
    assert torch.allclose(module.imputation_loss(out).loss, loss)

    # and fine-tuning on the query runs with its missing genes
    model.train(max_epochs=1, batch_size=16, **QUIET)
    model.train_imputer(max_epochs=1, batch_size=16, **QUIET)


def test_no_overlap_is_a_clear_error(trained_small):
    reference, adata = trained_small
    query = _fresh(adata)
    query.var_names = [f"gene{i}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="none of the query's 600 genes"):
        st.SCHyena.load_query_data(query, reference)


def test_case_insensitive_matching(trained_small):
    reference, adata = trained_small
    query = _fresh(adata)
    # other case throughout (as human symbols for mouse genes): no name matches exactly
    query.var_names = [g.swapcase() for g in query.var_names]
    assert not set(query.var_names) & set(reference.gene_vocabulary)
    with pytest.raises(ValueError, match="case_insensitive=True"):
        st.SCHyena.load_query_data(query, reference)
    model = st.SCHyena.load_query_data(query, reference, case_insensitive=True)
    assert model.module.gene_index is None  # every gene matched, in order
    assert list(model.gene_vocabulary) == list(query.var_names)  # spelled as the query spells them
    np.testing.assert_allclose(
        model.get_latent_representation(), reference.get_latent_representation(), rtol=1e-4, atol=1e-5
    )
    # some genes matched exactly, the rest only by case: the warning counts those and names the fix
    mixed = _fresh(adata)
    mixed.var_names = [g.swapcase() if i % 2 else g for i, g in enumerate(mixed.var_names)]
    with pytest.warns(UserWarning, match=r"300 of them differ .* only by case.*case_insensitive=True"):
        st.SCHyena.load_query_data(mixed, reference)


def test_query_without_labels_uses_reference_classifier(classifier_small):
    reference, adata = classifier_small
    query = _fresh(adata)[:, 50:].copy()
    query.obs = query.obs.drop(columns=["cell_type"])
    with pytest.warns(UserWarning, match="no labels column"):
        model = st.SCHyena.load_query_data(query, reference)
    assert model._label_classes() == reference._label_classes()
    assert model.is_classifier_trained_
    for key, value in reference.module.classifier.state_dict().items():
        assert torch.equal(model.module.classifier.state_dict()[key], value)
    labels = model.predict()
    assert set(labels) <= set(reference._label_classes())


def test_query_with_other_labels_gets_a_new_head(classifier_small):
    reference, adata = classifier_small
    query = _fresh(adata)
    query.obs["cell_type"] = pd.Categorical(np.where(np.arange(query.n_obs) % 2, "typeA", "typeB"))
    model = st.SCHyena.load_query_data(query, reference)
    assert model._label_classes() == ["typeA", "typeB"]
    assert not model.is_classifier_trained_
    with pytest.raises(RuntimeError, match="train_classifier"):
        model.predict()
    model.train_classifier(max_epochs=1, batch_size=16, **QUIET)
    assert set(model.predict()) <= {"typeA", "typeB"}


def test_query_model_saves_and_loads(classifier_small, tmp_path):
    reference, adata = classifier_small
    query = _fresh(adata)[:, ::-1].copy()[:, :450].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = st.SCHyena.load_query_data(query, reference)
    model.save(tmp_path / "query", save_anndata=False)
    loaded = st.SCHyena.load(tmp_path / "query", adata=query)
    np.testing.assert_array_equal(loaded.module.gene_index.numpy(), model.module.gene_index.numpy())
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(loaded.predict(), model.predict())


def test_lamanno_query_on_zeisel_reference(trained_small):
    """A real other dataset: La Manno midbrain neurons on a Zeisel-trained model."""
    reference, _ = trained_small
    lamanno = st.datasets.lamanno_midbrain_dopaminergic()[:30].copy()
    with pytest.warns(UserWarning, match="not in the reference vocabulary"):
        model = st.SCHyena.load_query_data(lamanno, reference)
    measured = (model.module.gene_index >= 0).sum().item()
    assert 0 < measured < len(reference.gene_vocabulary)
    assert model.n_vocabulary_genes_measured_ == measured
    z = model.get_latent_representation()
    assert z.shape == (30, TINY["d_model"]) and np.isfinite(z).all()
    imputed = model.get_imputed_expression(indices=[0, 1], all_genes=False)
    assert imputed.shape == (2, measured)
    assert set(imputed.columns) <= set(lamanno.var_names)


def _with_marker_genes(adata, labels, n_extra=5, seed=0):
    """``adata`` plus ``n_extra`` genes outside any vocabulary; the first marks the first class."""
    rng = np.random.default_rng(seed)
    extra = rng.poisson(0.2, (adata.n_obs, n_extra)).astype(np.float32)
    first = np.asarray(labels) == np.asarray(labels)[0]
    extra[first, 0] += 40.0
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return type(adata)(
        X=np.hstack([counts, extra]).astype(np.float32),
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=list(adata.var_names) + [f"NotInVocab{i}" for i in range(n_extra)]),
    )


def test_classifier_reads_query_genes_outside_the_vocabulary(classifier_small, tmp_path):
    """The encoder cannot read a gene it has no token for; the classifier's expression path can."""
    reference, adata = classifier_small
    query = _with_marker_genes(_fresh(adata), adata.obs["cell_type"])
    with pytest.warns(UserWarning, match="5 of the query's 605 genes .*cell-type classifier reads them"):
        model = st.SCHyena.load_query_data(query, reference)
    assert reference.module.n_extra_genes == 0 and model.module.n_extra_genes == 5
    np.testing.assert_array_equal(model.module.extra_gene_index.numpy(), np.arange(600, 605))
    head = model.module.classifier
    assert head.expression_linear.in_features == len(model.gene_vocabulary) + 5
    # the transferred head gets the extra genes at zero weight: it predicts what it predicted
    # (up to the library sizes, which now count the extra genes' reads)
    assert torch.count_nonzero(head.expression_linear.weight[:, -5:]) == 0
    np.testing.assert_allclose(
        model.predict(soft=True).to_numpy(), reference.predict(soft=True).to_numpy(), atol=2e-3
    )
    assert np.isfinite(model.get_unknown_scores()).all()  # the carried reference reads the vocabulary part

    model.train_classifier(**QUIET)  # the probe, on every query gene
    weights = head.expression_linear.weight.detach().abs()
    marker, others = weights[:, -5].max(), weights[:, -4:].max()
    assert marker > 2 * others, (marker, others)
    assert marker >= weights[:, : len(model.gene_vocabulary)].max() / 2
    model.save(tmp_path / "query", save_anndata=False)
    loaded = st.SCHyena.load(tmp_path / "query", adata=query)
    assert loaded.module.n_extra_genes == 5
    np.testing.assert_allclose(
        loaded.predict(soft=True).to_numpy(), model.predict(soft=True).to_numpy(), rtol=1e-5, atol=1e-6
    )

    # a query of that query: its own extra genes are not the next query's, so they do not transfer
    second = _with_marker_genes(_fresh(adata), adata.obs["cell_type"], n_extra=3, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = st.SCHyena.load_query_data(second, model)
    assert again.module.n_extra_genes == 3
    assert torch.count_nonzero(again.module.classifier.expression_linear.weight[:, -3:]) == 0
    assert getattr(again, "unknown_reference_", None) is None
    with pytest.raises(RuntimeError, match="train_classifier"):
        again.get_unknown_scores()
