"""Doublet detection: artificial doublets, the cross-fitted probe, fine-tuning, persistence."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from sklearn.metrics import roc_auc_score

import schyena_tools as st
from schyena_tools.model._doublets import doublet_parents, posterior_logit
from schyena_tools.module._module import add_artificial_doublets

from ._helpers import TINY


def test_artificial_doublets_sum_two_different_cells():
    counts = torch.arange(12, dtype=torch.float32).reshape(4, 3) ** 2
    both, targets = add_artificial_doublets(counts)
    assert both.shape == (8, 3) and targets.tolist() == [0] * 4 + [1] * 4
    torch.testing.assert_close(both[:4], counts)
    # every doublet is the sum of two different rows, and each cell is in exactly two pairs
    sums = {tuple((counts[i] + counts[j]).tolist()): (i, j) for i in range(4) for j in range(4) if i != j}
    pairs = [sums[tuple(row.tolist())] for row in both[4:]]
    assert sorted(i for pair in pairs for i in pair) == [0, 0, 1, 1, 2, 2, 3, 3]
    one, target = add_artificial_doublets(counts[:1])
    assert one.shape == (1, 3) and target.tolist() == [0]


def test_doublet_parents_are_two_different_cells_drawn_uniformly():
    parents = doublet_parents(5, 20000, seed=3)
    assert (parents[:, 0] != parents[:, 1]).all()
    frequency = np.bincount(parents.ravel(), minlength=5) / parents.size
    np.testing.assert_allclose(frequency, 0.2, atol=0.01)
    with pytest.raises(ValueError, match="at least 2 cells"):
        doublet_parents(1, 3, seed=0)


def test_posterior_logit_moves_the_training_prior_to_the_expected_rate():
    # trained 1:1, the readout's logit 0 means "as likely as not": at a 5% rate it is 5%
    logit = posterior_logit(np.zeros(1), 100, 100, 0.05)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), 0.05)


def _with_held_out_doublets(adata, n_doublets, seed=123):
    parents = doublet_parents(adata.n_obs, n_doublets, seed)
    counts = sp.csr_matrix(adata.X)
    combined = AnnData(
        sp.vstack([counts, counts[parents[:, 0]] + counts[parents[:, 1]]]).tocsr(),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    combined.obs_names = [f"cell{i}" for i in range(combined.n_obs)]
    return combined, np.r_[np.zeros(adata.n_obs), np.ones(n_doublets)]


@pytest.fixture
def doublet_model(zeisel_small):
    adata, truth = _with_held_out_doublets(zeisel_small, 20)
    st.SCHyena.setup_anndata(adata)
    model = st.SCHyena(adata, **TINY)
    model.train(max_epochs=1, batch_size=16, enable_progress_bar=False)
    return model, adata, truth


def test_detector_finds_held_out_doublets_and_writes_scores(doublet_model):
    model, adata, truth = doublet_model
    before = adata.copy()
    model.train_doublet_detector(progress_bar=False)
    result = model.predict_doublets(progress_bar=False)
    assert list(result.columns) == ["doublet_score", "predicted_doublet"]
    assert result.index.equals(adata.obs_names)
    scores = result["doublet_score"].to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    # held-out doublets (made with a seed the detector never used) score above the real cells
    assert roc_auc_score(truth, scores) > 0.8
    assert (result["predicted_doublet"] == (scores > 0.5)).all()
    # nothing was written into adata
    assert list(adata.obs.columns) == list(before.obs.columns)
    model.predict_doublets(key_added="schyena", progress_bar=False)
    np.testing.assert_allclose(adata.obs["schyena_doublet_score"].to_numpy(), scores)
    assert adata.obs["schyena_predicted_doublet"].dtype == bool
    with pytest.raises(ValueError, match="exists already"):
        model.predict_doublets(key_added="schyena", progress_bar=False)


def test_registered_cells_are_scored_out_of_fold(doublet_model):
    model, adata, _ = doublet_model
    model.train_doublet_detector(progress_bar=False)
    out_of_fold = model.predict_doublets(progress_bar=False)["doublet_score"].to_numpy()
    # the final readout, fitted on every cell, scores the same cells in-sample: lower on the
    # real cells it learned as singlets
    in_sample = model.predict_doublets(adata, progress_bar=False)["doublet_score"].to_numpy()
    assert not np.allclose(out_of_fold, in_sample)
    assert in_sample[: adata.n_obs - 20].mean() < out_of_fold[: adata.n_obs - 20].mean()


def test_detector_fine_tunes_with_fresh_doublets(doublet_model):
    model, adata, truth = doublet_model
    model.train_doublet_detector(max_epochs=1, progress_bar=False)
    assert "doublet_accuracy_train" in model.history
    scores = model.predict_doublets(progress_bar=False)["doublet_score"].to_numpy()
    assert np.isfinite(scores).all() and roc_auc_score(truth, scores) > 0.6


def test_detector_survives_save_and_load(doublet_model, tmp_path):
    model, adata, _ = doublet_model
    model.train_doublet_detector(progress_bar=False)
    expected = model.predict_doublets(adata, progress_bar=False)["doublet_score"].to_numpy()
    model.save(tmp_path / "m", overwrite=True)
    loaded = st.SCHyena.load(str(tmp_path / "m"), adata=adata)
    got = loaded.predict_doublets(progress_bar=False)["doublet_score"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_models_saved_before_the_doublet_head_load_it_untrained(trained):
    model, _ = trained
    state = {k: v for k, v in model.module.state_dict().items() if not k.startswith("doublet_classifier.")}
    fresh = st.SCHyena(model.adata, **TINY)
    fresh.module.load_state_dict(state)  # strict: no missing-key error
    for key, value in model.module.state_dict().items():
        if not key.startswith("doublet_classifier."):
            assert torch.equal(fresh.module.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(expected_doublet_rate=0.0), "expected_doublet_rate"),
        (dict(expected_doublet_rate=1.0), "expected_doublet_rate"),
        (dict(n_folds=1), "n_folds"),
        (dict(n_doublets=0), "n_doublets"),
        (dict(max_epochs=-1), "max_epochs"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_bad_detector_arguments_fail_before_any_work(trained, kwargs, match):
    model, _ = trained
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        model.train_doublet_detector(progress_bar=False, **kwargs)
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_predicting_doublets_before_training_says_what_to_do(trained):
    model, _ = trained
    with pytest.raises(RuntimeError, match="train_doublet_detector"):
        model.predict_doublets()
