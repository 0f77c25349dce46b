"""Fine-tuning for classification and imputation on small real data."""

import numpy as np
import pandas as pd
import pytest
import torch
from scvi import REGISTRY_KEYS

import schyena_tools as st
from schyena_tools.module import SCHyenaModule

from ._helpers import TINY

QUIET = dict(enable_progress_bar=False)


def _with_unlabelled(adata, n_unlabelled=14, seed=0):
    """Copy of the labels with some cells marked 'Unknown' (the unlabeled category)."""
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    chosen = np.random.default_rng(seed).choice(adata.n_obs, n_unlabelled, replace=False)
    labels[chosen] = "Unknown"
    adata.obs["partial_label"] = pd.Categorical(labels)
    return np.sort(chosen)


# ---------------------------------------------------------------------- classification
def test_classes_exclude_unlabeled_category_and_head_size(zeisel_small):
    _with_unlabelled(zeisel_small)
    st.SCHyena.setup_anndata(zeisel_small, labels_key="partial_label")
    model = st.SCHyena(zeisel_small, **TINY)
    classes = model._label_classes()
    assert "Unknown" not in classes
    assert sorted(classes) == sorted(zeisel_small.obs["cell_type"].cat.categories)
    assert model.module.n_labels == len(classes) == 7
    assert model.module.classifier.out_features == 7


def test_unlabelled_cells_do_not_contribute_to_loss(zeisel_small):
    unlabelled = _with_unlabelled(zeisel_small)
    st.SCHyena.setup_anndata(zeisel_small, labels_key="partial_label")
    model = st.SCHyena(zeisel_small, **TINY)
    module = model.module
    module.eval()  # no dropout, running statistics: each cell's logits depend on that cell alone
    counts = torch.as_tensor(zeisel_small.X.toarray(), dtype=torch.float32)
    codes = torch.as_tensor(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1, 1)
    assert (codes.reshape(-1)[unlabelled] == module.n_labels).all()  # unlabeled is the last index

    def loss_with(labels, cells=counts):
        tensors = {REGISTRY_KEYS.X_KEY: cells, REGISTRY_KEYS.LABELS_KEY: labels}
        _, _, out = module(tensors, loss_kwargs={"objective": "classify"})
        return out.loss

    reference = loss_with(codes)
    # Whatever the unlabelled cells contain, the loss must not change...
    other_cells = counts.clone()
    other_cells[unlabelled] = torch.poisson(torch.full_like(counts[unlabelled], 3.0))
    assert not torch.equal(other_cells, counts)
    assert torch.allclose(loss_with(codes, other_cells), reference)
    # ...whereas relabelling a labelled cell does.
    labelled_cell = int(np.setdiff1d(np.arange(zeisel_small.n_obs), unlabelled)[0])
    relabelled = codes.clone()
    relabelled[labelled_cell] = (codes[labelled_cell] + 1) % module.n_labels
    assert not torch.allclose(loss_with(relabelled), reference)
    # The loss is the mean cross-entropy over labelled cells only.
    logits = module.inference(counts)["logits"]
    labelled = np.setdiff1d(np.arange(zeisel_small.n_obs), unlabelled)
    expected = torch.nn.functional.cross_entropy(logits[labelled], codes.reshape(-1)[labelled].long())
    assert torch.allclose(reference, expected, atol=1e-6)


def test_all_unlabelled_batch_gives_zero_loss():
    module = SCHyenaModule(n_genes=50, n_labels=3, **TINY)
    counts = torch.poisson(torch.full((4, 50), 2.0))
    tensors = {REGISTRY_KEYS.X_KEY: counts, REGISTRY_KEYS.LABELS_KEY: torch.full((4, 1), 3.0)}
    _, _, out = module(tensors, loss_kwargs={"objective": "classify"})
    assert out.loss.item() == 0.0 and out.loss.requires_grad


def test_train_classifier_learns_and_predicts_labels(zeisel_small):
    unlabelled = _with_unlabelled(zeisel_small)
    st.SCHyena.setup_anndata(zeisel_small, labels_key="partial_label")
    model = st.SCHyena(zeisel_small, **TINY)
    # without the linear probe, so that the fine-tuning itself has to learn the labels
    model.train_classifier(max_epochs=15, batch_size=16, lr=3e-3, train_size=1.0, linear_probe=False, **QUIET)
    history = model.phase_history_["classify"]
    accuracy = history["accuracy_train"]["accuracy_train"].to_numpy(dtype=float)
    assert accuracy[-1] > accuracy[0] and accuracy[-1] > 0.6, accuracy
    assert "accuracy_train" in model.history

    labels, confidence = model.predict(return_confidence=True)
    assert labels.shape == (zeisel_small.n_obs,)
    assert set(labels) <= set(model._label_classes())
    assert ((confidence > 0) & (confidence <= 1)).all()
    truth = zeisel_small.obs["cell_type"].astype(str).to_numpy()
    labelled = np.setdiff1d(np.arange(zeisel_small.n_obs), unlabelled)
    assert (labels[labelled] == truth[labelled]).mean() > 0.6

    soft = model.predict(soft=True, indices=[3, 0, 7])
    assert list(soft.index) == list(zeisel_small.obs_names[[3, 0, 7]])
    assert list(soft.columns) == model._label_classes()
    np.testing.assert_allclose(soft.sum(1).to_numpy(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        soft.to_numpy().argmax(1), pd.Index(soft.columns).get_indexer(labels[[3, 0, 7]])
    )
    np.testing.assert_allclose(soft.to_numpy().max(1), confidence[[3, 0, 7]], rtol=1e-5)
    assert "schyena_prediction" not in zeisel_small.obs  # predict never writes into adata


def test_freeze_encoder_trains_head_only(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    encoder_before = {k: v.clone() for k, v in model.module.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.module.classifier.state_dict().items()}
    model.train_classifier(max_epochs=1, batch_size=16, freeze_encoder=True, **QUIET)
    for key, value in model.module.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in model.module.classifier.state_dict().items())
    assert all(p.requires_grad for p in model.module.encoder.parameters())  # restored afterwards


def test_classifier_errors(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(ValueError, match="labels_key"):
        model.train_classifier(max_epochs=1)
    with pytest.raises(ValueError, match="no classification head"):
        model.predict()

    adata = zeisel_small.copy()
    adata.obs["nothing"] = pd.Categorical(["Unknown"] * adata.n_obs)
    st.SCHyena.setup_anndata(adata, labels_key="nothing")
    with pytest.raises(ValueError, match="unlabeled category"):
        st.SCHyena(adata, **TINY).train_classifier(max_epochs=1)

    adata = zeisel_small.copy()
    adata.obs["one"] = pd.Categorical(["a"] * (adata.n_obs - 5) + ["Unknown"] * 5)
    st.SCHyena.setup_anndata(adata, labels_key="one")
    with pytest.raises(ValueError, match="single labelled class"):
        st.SCHyena(adata, **TINY).train_classifier(max_epochs=1)

    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    untrained = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(RuntimeError, match="train_classifier"):
        untrained.predict()


# ---------------------------------------------------------------------- imputation
@pytest.fixture
def imputer(trained_small):
    model, adata = trained_small
    model.train_imputer(max_epochs=1, batch_size=16, **QUIET)
    return model, adata


def test_imputer_training_records_dropout_metrics(imputer):
    model, _ = imputer
    history = model.phase_history_["impute"]
    for key in ("train_loss", "dropout_mse_train", "zero_mse_train", "observed_mse_train"):
        assert key in history and np.isfinite(history[key].to_numpy(dtype=float)).all(), key


def test_imputation_loss_scores_the_dropped_entries():
    torch.manual_seed(0)
    module = SCHyenaModule(n_genes=40, **TINY)
    counts = torch.poisson(torch.full((6, 40), 1.0))
    out = module.inference(counts, dropout_ratio=0.3)
    dropped = out["dropped"]
    assert dropped.any() and not (dropped & (counts == 0)).any()  # only non-zeros are dropped
    assert (out["values"][dropped] == 0).all()  # the network sees them as zeros...
    assert out["masked"][dropped].all()  # ...behind the mask token
    # the targets are the hidden values on the scale of the remaining library
    library = counts.masked_fill(dropped, 0).sum(1, keepdim=True)
    expected = torch.log1p(counts / library * module.target_sum)
    torch.testing.assert_close(out["dropout_targets"][dropped], expected[dropped])
    loss = module.imputation_loss(out)
    assert torch.isfinite(loss.loss) and loss.extra_metrics["dropout_mse"] > 0


def test_scmamba_imputation_loss_pools_dropped_entries_and_sampled_zeros():
    torch.manual_seed(0)
    module = SCHyenaModule(n_genes=400, **TINY)
    counts = torch.poisson(torch.full((8, 400), 0.3))
    out = module.inference(counts, dropout_ratio=0.4, zero_score_ratio=0.1)
    scored, dropped = out["scored_zeros"], out["dropped"]
    assert not (scored & (counts > 0)).any()  # only genes that really read zero are sampled
    share = scored.sum() / (counts == 0).sum()
    assert 0.07 < share < 0.13
    # one mean over the pooled entries, not the sum of group means
    prediction, values = out["predicted_expression"], out["values"]
    targets = torch.where(dropped, out["dropout_targets"], values)
    pooled = (dropped | scored).float()
    per_cell = ((prediction - targets) ** 2 * pooled).sum(1) / pooled.sum(1)
    loss = module.imputation_loss(out)
    torch.testing.assert_close(loss.loss, per_cell.mean())
    grouped = module.imputation_loss({key: value for key, value in out.items() if key != "scored_zeros"})
    assert not torch.isclose(grouped.loss, loss.loss)


def test_train_imputer_checks_zero_score_ratio(imputer):
    model, _ = imputer
    with pytest.raises(ValueError, match="zero_score_ratio must be in"):
        model.train_imputer(zero_score_ratio=0.0)


def test_imputation_shapes_and_keep_observed(imputer):
    model, adata = imputer
    imputed = model.get_imputed_expression()
    assert isinstance(imputed, pd.DataFrame)
    assert imputed.shape == adata.shape
    assert list(imputed.columns) == list(adata.var_names) and list(imputed.index) == list(adata.obs_names)
    assert np.isfinite(imputed.to_numpy()).all() and (imputed.to_numpy() >= 0).all()

    counts = adata.X.toarray()
    observed = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    nonzero = counts > 0
    # keep_observed=True: measured values untouched, zeros imputed (not all left at zero)
    np.testing.assert_allclose(imputed.to_numpy()[nonzero], observed[nonzero], rtol=1e-5, atol=1e-5)
    assert (imputed.to_numpy()[~nonzero] > 0).mean() > 0.5
    # keep_observed=False: measured values replaced by predictions
    replaced = model.get_imputed_expression(keep_observed=False, return_numpy=True)
    assert replaced.dtype == np.float32
    assert not np.allclose(replaced[nonzero], observed[nonzero], atol=1e-3)
    np.testing.assert_allclose(replaced[~nonzero], imputed.to_numpy()[~nonzero], rtol=1e-5, atol=1e-6)


def test_imputation_chunking_and_gene_list(imputer):
    model, adata = imputer
    one_chunk = model.get_imputed_expression(batch_size=adata.n_obs, return_numpy=True)
    many_chunks = model.get_imputed_expression(batch_size=3, return_numpy=True)
    np.testing.assert_allclose(many_chunks, one_chunk, rtol=1e-5, atol=1e-6)

    genes = [adata.var_names[10], adata.var_names[2], adata.var_names[500]]
    subset = model.get_imputed_expression(gene_list=genes, indices=[4, 1])
    assert list(subset.columns) == genes and subset.shape == (2, 3)
    np.testing.assert_allclose(subset.to_numpy(), one_chunk[[4, 1]][:, [10, 2, 500]], rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="NotAGene"):
        model.get_imputed_expression(gene_list=[adata.var_names[0], "NotAGene"])


def test_imputation_count_scale(imputer):
    model, adata = imputer
    counts = adata.X.toarray()
    scaled = model.get_imputed_expression(count_scale=True, return_numpy=True)
    nonzero = counts > 0
    np.testing.assert_allclose(scaled[nonzero], counts[nonzero], rtol=1e-3)
    assert (scaled >= 0).all()
