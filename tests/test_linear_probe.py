"""The linear probe of ``train_classifier``: the head's readout fitted as a logistic regression."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import schyena_tools as st
from schyena_tools.model._linear_readout import fit_linear_readout, probe_cells
from schyena_tools.nn import CellTypeClassifier

from ._helpers import TINY

QUIET = dict(enable_progress_bar=False)


def _toy(n_cells=90, d_model=6, n_genes=40, n_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_cells) % n_classes
    embedding = torch.randn(n_cells, d_model, generator=generator) + labels[:, None] * 0.3
    expression = torch.rand(n_cells, n_genes, generator=generator) * 3
    expression[:, :5] += labels[:, None] * 0.5  # a few marker genes
    return embedding, expression, labels


def test_probe_is_the_logistic_regression_of_scikit_learn():
    embedding, expression, labels = _toy()
    head = CellTypeClassifier(d_model=6, n_genes=40, n_labels=3).eval()
    fit_linear_readout(head, embedding, expression, None, labels, penalty=2.0)
    with torch.no_grad():
        ours = torch.softmax(head(embedding, torch.randn(90, 40, 6), expression), 1).numpy()
    # The same model built independently: sc.pp.scale-like standardisation, then C = 1 / penalty.
    normed = torch.nn.functional.layer_norm(embedding, (6,)).numpy()
    features = np.clip(StandardScaler().fit_transform(np.hstack([normed, expression.numpy()])), -10, 10)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(features, labels.numpy())
    np.testing.assert_allclose(ours, reference.predict_proba(features), atol=2e-3)
    # the contextual gene-state path starts at zero: the probe's logits are all there is
    assert torch.count_nonzero(head.gene_linear.weight) == 0


def test_missing_genes_get_no_weight_and_no_statistics():
    embedding, expression, labels = _toy()
    missing = torch.zeros(40, dtype=torch.bool)
    missing[[3, 20, 21]] = True
    expression[:, missing] = 0.0
    head = CellTypeClassifier(d_model=6, n_genes=40, n_labels=3)
    fit_linear_readout(head, embedding, expression, missing, labels)
    assert torch.count_nonzero(head.expression_linear.weight[:, missing]) == 0
    assert torch.count_nonzero(head.expression_linear.weight[:, ~missing]) > 0
    assert torch.all(head.expression_mean[missing] == 0) and torch.all(head.expression_scale[missing] == 1)


def test_head_saved_before_the_expression_path_loads_unchanged():
    torch.manual_seed(0)
    old = CellTypeClassifier(d_model=6, n_genes=40, n_labels=3).eval()
    state = old.state_dict()  # an OrderedDict whose _metadata holds the version
    for key in ("expression_linear.weight", "expression_mean", "expression_scale", "cell_mean", "cell_scale"):
        del state[key]
    state._metadata[""]["version"] = 1  # what a version-1 head's state dict carried
    new = CellTypeClassifier(d_model=6, n_genes=40, n_labels=3).eval()
    with torch.no_grad():  # not neutral: loading must set these, not keep them
        new.expression_linear.weight.fill_(1.0)
        new.cell_scale.fill_(5.0)
    new.load_state_dict(state)  # strict: nothing reported missing
    embedding, expression, _ = _toy()
    hidden = torch.randn(90, 40, 6)
    with torch.no_grad():
        per_gene = old.token_projection(hidden).squeeze(-1)
        version_1 = old.cell_linear(old.cell_norm(embedding)) + old.gene_linear(per_gene)
        torch.testing.assert_close(new(embedding, hidden, expression), version_1)
    with pytest.raises(RuntimeError, match="Missing key"):  # a current head still loads strictly
        state._metadata[""]["version"] = 2
        CellTypeClassifier(d_model=6, n_genes=40, n_labels=3).load_state_dict(state)


def test_head_saved_without_extra_genes_loads_with_them_at_zero():
    """A head saved before it read genes outside the vocabulary computes the same after loading."""
    embedding, expression, labels = _toy()
    old = CellTypeClassifier(d_model=6, n_genes=40, n_labels=3).eval()
    fit_linear_readout(old, embedding, expression, None, labels)
    new = CellTypeClassifier(d_model=6, n_genes=40, n_labels=3, n_extra_genes=4).eval()
    new.load_state_dict(old.state_dict())  # strict: shapes padded, nothing missing
    assert new.expression_linear.weight.shape == (3, 44)
    assert torch.count_nonzero(new.expression_linear.weight[:, 40:]) == 0
    extra = torch.rand(90, 4) * 5
    hidden = torch.randn(90, 40, 6)
    missing = torch.zeros(44, dtype=torch.bool)
    missing[7] = True
    with torch.no_grad():
        torch.testing.assert_close(
            new(embedding, hidden, torch.cat([expression, extra], 1), missing),
            old(embedding, hidden, expression, missing[:40]),
        )


def test_probe_cells_are_capped_at_random():
    cells = np.arange(0, 20_000, 2)
    assert np.array_equal(probe_cells(cells[:100], seed=0), cells[:100])
    chosen = probe_cells(cells, seed=0, max_cells=500)
    assert chosen.size == 500 and np.all(np.isin(chosen, cells)) and np.all(np.diff(chosen) > 0)


def test_probe_alone_trains_the_classifier_and_leaves_the_encoder(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    encoder = {k: v.clone() for k, v in model.module.encoder.state_dict().items()}
    assert model.train_classifier(max_epochs=0) is None
    assert model.is_classifier_trained_
    for name, value in model.module.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder[name], rtol=0, atol=0, msg=name)
    truth = zeisel_small.obs["cell_type"].astype(str).to_numpy()
    # a logistic regression on ~100 cells and their genes separates its own training cells
    assert (model.predict() == truth).mean() > 0.9


def test_fine_tuning_starts_from_the_probe(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    # Uncalibrated: fine-tuning without validation cells leaves the temperature at 1.
    model.train_classifier(max_epochs=0, calibrate=False)
    probed = model.predict(soft=True)
    # lr 0: one epoch of fine-tuning moves nothing, so the probe is where it starts
    model.train_classifier(max_epochs=1, lr=0.0, warmup_fraction=0.0, calibrate=False, **QUIET)
    np.testing.assert_allclose(model.predict(soft=True).to_numpy(), probed.to_numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_epochs=0, linear_probe=False), "trains nothing"),
        (dict(max_epochs=-1), "non-negative"),
        (dict(probe_penalty=0.0), "probe_penalty"),
        (dict(probe_iterations=0), "probe_iterations"),
        (dict(probe_iterations="early"), "probe_iterations"),
    ],
)
def test_bad_probe_arguments_fail_before_any_work(zeisel_small, kwargs, match):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        model.train_classifier(**kwargs)
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_columns_that_are_zero_everywhere_get_zero_weight_and_change_nothing():
    from schyena_tools.model._linear_readout import solve_logistic

    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(60, 8)))
    labels = torch.from_numpy(rng.integers(0, 3, 60))
    padded = torch.cat([features[:, :4], torch.zeros(60, 5, dtype=features.dtype), features[:, 4:]], dim=1)
    weight, bias, loss = solve_logistic(features, labels, 3, 1.0)
    padded_weight, padded_bias, padded_loss = solve_logistic(padded, labels, 3, 1.0)
    assert (padded_weight[:, 4:9] == 0).all()
    torch.testing.assert_close(torch.cat([padded_weight[:, :4], padded_weight[:, 9:]], 1), weight)
    torch.testing.assert_close(padded_bias, bias)
    assert padded_loss == pytest.approx(loss)


def test_logistic_path_snapshots_continue_one_fit_and_end_at_the_optimum():
    from schyena_tools.model._linear_readout import logistic_path, solve_logistic

    embedding, expression, labels = _toy()
    features = torch.cat([embedding, expression], 1).double()
    path = logistic_path(features, labels, 3, 1.0, (2, 10, 500))
    weight, bias, _ = solve_logistic(features, labels, 3, 1.0)
    torch.testing.assert_close(path[-1][0], weight)
    torch.testing.assert_close(path[-1][1], bias)
    first, _, _ = solve_logistic(features, labels, 3, 1.0, max_iter=2)
    torch.testing.assert_close(path[0][0], first)
    # early snapshots are smaller: stopping early shrinks the weights towards the zero start
    norms = [w.norm().item() for w, _ in path]
    assert norms[0] < norms[1] <= norms[2] + 1e-9


def test_early_stopped_probe_chooses_its_iterations_on_the_training_cells(zeisel_small):
    from schyena_tools.model._linear_readout import PROBE_ITERATION_GRID

    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(max_epochs=0, probe_iterations="cv")
    assert model.probe_iterations_ in PROBE_ITERATION_GRID
    truth = zeisel_small.obs["cell_type"].astype(str).to_numpy()
    assert (model.predict() == truth).mean() > 0.8
    assert model.classifier_temperature_ > 0
    model.train_classifier(max_epochs=0, probe_iterations=3)
    assert model.probe_iterations_ == 3


def test_self_trained_probe_adds_only_confident_unlabelled_cells():
    from schyena_tools.model._linear_readout import early_stopped_probe, self_trained_probe

    embedding, expression, labels = _toy(n_cells=150)
    features = torch.cat([embedding, expression], 1).double()
    features = (features - features.mean(0)) / features.std(0)
    labelled, unlabelled = features[:60], features[60:]
    iterations, weight, bias, _ = early_stopped_probe(labelled, labels[:60], 3, 1.0)
    # without unlabelled cells, or with none confident enough, it is the early-stopped probe
    for extra, confidence in ((None, 0.9), (unlabelled, 1.01)):
        w, b, info = self_trained_probe(labelled, labels[:60], 3, 1.0, extra, confidence)
        torch.testing.assert_close(w, weight)
        torch.testing.assert_close(b, bias)
        assert info["pseudo_labelled"] == 0 and info["iterations"] == iterations
    w, b, info = self_trained_probe(labelled, labels[:60], 3, 1.0, unlabelled, 0.5)
    assert 0 < info["pseudo_labelled"] <= len(unlabelled)
    assert info["iterations"] == iterations
    assert not torch.allclose(w, weight)  # refitted on more cells
    # a confidence no softmax reaches adds none; a lower bar adds at least as many cells
    lower = self_trained_probe(labelled, labels[:60], 3, 1.0, unlabelled, 0.4)[2]
    assert lower["pseudo_labelled"] >= info["pseudo_labelled"]


def test_probe_embedding_weight_fits_the_scaled_columns_and_keeps_the_heads_inputs(zeisel_small):
    from schyena_tools.model._linear_readout import readout_features, solve_logistic

    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(probe_iterations=500, probe_embedding_weight=3.0, **QUIET)
    head = model.module.classifier
    embedding, expression, missing = [], [], None
    for _, out in model._inference_batches(zeisel_small, None, 32):
        embedding.append(out["cell_embedding"].float().cpu())
        expression.append(out["classifier_expression"].float().cpu())
        missing = out["classifier_unseen"]
    features = readout_features(head, torch.cat(embedding), torch.cat(expression), missing)
    d_model = TINY["d_model"]
    scaled = features.clone()
    scaled[:, :d_model] *= 3.0
    codes = torch.from_numpy(zeisel_small.obs["cell_type"].cat.codes.to_numpy().copy()).long()
    weight, bias, _ = solve_logistic(scaled, codes, head.out_features, 1.0, max_iter=500)
    expected = (scaled @ weight.T + bias).float().numpy()
    np.testing.assert_allclose(model._class_logits(zeisel_small, None), expected, atol=2e-3, rtol=1e-3)
    # a different fit from the unweighted probe's
    plain = st.SCHyena(zeisel_small, **TINY)
    plain.module.load_state_dict(model.module.state_dict())
    plain.train_classifier(probe_iterations=500, **QUIET)
    assert not np.allclose(plain._class_logits(zeisel_small, None), expected, atol=1e-2)
    with pytest.raises(ValueError, match="probe_embedding_weight"):
        model.train_classifier(probe_embedding_weight=0, **QUIET)
