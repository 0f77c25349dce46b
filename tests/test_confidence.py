"""Calibrated confidence and the unknown-type score: the functions, and through the model."""

import numpy as np
import pytest
import torch

import schyena_tools as st
from schyena_tools.model._confidence import (
    expected_calibration_error,
    fit_temperature,
    fit_unknown_reference,
    project,
    unknown_scores,
)

from ._helpers import TINY


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    probabilities = torch.softmax(torch.from_numpy(true_logits), 1).numpy()
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    # a classifier three times too sure of itself
    temperature = fit_temperature(true_logits * 3, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    over = torch.softmax(torch.from_numpy(true_logits * 3), 1).numpy()
    fixed = torch.softmax(torch.from_numpy(true_logits * 3 / temperature), 1).numpy()
    assert expected_calibration_error(fixed, labels) < 0.03 < expected_calibration_error(over, labels)


def test_unknown_score_is_high_far_from_the_reference_and_unsure():
    rng = np.random.default_rng(1)
    reference_features = torch.from_numpy(rng.normal(size=(300, 20)).astype(np.float32))
    confidences = rng.uniform(0.6, 1.0, 300)
    reference = fit_unknown_reference(reference_features, confidences)
    inside = torch.from_numpy(rng.normal(size=(50, 20)).astype(np.float32))
    outside = inside + 8.0
    near = unknown_scores(reference, project(reference, inside), np.full(50, 0.9))
    far = unknown_scores(reference, project(reference, outside), np.full(50, 0.5))
    assert ((0 <= near) & (near <= 1)).all() and ((0 <= far) & (far <= 1)).all()
    assert far.min() > 0.95 and near.mean() < 0.6


@pytest.fixture
def classified(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(enable_progress_bar=False)
    return model, zeisel_small


def test_classifier_fits_a_temperature_and_scores_unknown_types(classified, tmp_path):
    model, adata = classified
    assert model.classifier_temperature_ != 1.0
    labels, confidence, unknown = model.predict(
        return_confidence=True, return_unknown_score=True, progress_bar=False
    )
    assert len(labels) == len(confidence) == len(unknown) == adata.n_obs
    assert ((unknown >= 0) & (unknown <= 1)).all()
    np.testing.assert_allclose(model.get_unknown_scores(progress_bar=False), unknown, rtol=1e-5, atol=1e-6)
    # the confidence is the calibrated largest probability
    soft = model.predict(soft=True, progress_bar=False)
    np.testing.assert_allclose(soft.to_numpy().max(1), confidence, rtol=1e-5)
    # cells above the threshold are labelled unknown, the others keep their type
    threshold = float(np.quantile(unknown, 0.8))
    flagged = model.predict(unknown_threshold=threshold, progress_bar=False)
    assert (flagged[unknown > threshold] == "unknown").all()
    assert (flagged[unknown <= threshold] == labels[unknown <= threshold]).all()
    model.predict(unknown_threshold=threshold, key_added="st", progress_bar=False)
    assert {"st_prediction", "st_confidence", "st_unknown_score"} <= set(adata.obs.columns)
    assert "unknown" in adata.obs["st_prediction"].cat.categories
    # saved and loaded with the model
    model.save(tmp_path / "m", overwrite=True)
    loaded = st.SCHyena.load(str(tmp_path / "m"), adata=adata)
    np.testing.assert_allclose(loaded.get_unknown_scores(progress_bar=False), unknown, rtol=1e-5, atol=1e-6)


def test_works_without_a_global_seed(zeisel_small):
    import scvi

    scvi.settings.seed = None  # a user who never set one
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(enable_progress_bar=False)
    model.train_doublet_detector(progress_bar=False)
    assert np.isfinite(model.get_unknown_scores(progress_bar=False)).all()


def test_fitting_the_reference_leaves_the_callers_random_state_alone():
    features = torch.randn(30, 5)
    torch.manual_seed(7)
    fit_unknown_reference(features, np.ones(30), seed=3)
    drawn = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), drawn)


def test_unknown_label_must_not_be_a_class(classified):
    model, adata = classified
    existing = str(adata.obs["cell_type"].cat.categories[0])
    with pytest.raises(ValueError, match="unknown_label"):
        model.predict(unknown_threshold=0.9, unknown_label=existing)
    with pytest.raises(ValueError, match="unknown_threshold"):
        model.predict(unknown_threshold=1.5)


def test_fine_tuning_with_validation_cells_calibrates_on_them(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(max_epochs=1, train_size=0.7, batch_size=16, enable_progress_bar=False)
    assert model.classifier_temperature_ != 1.0
    model.train_classifier(max_epochs=1, batch_size=16, enable_progress_bar=False)
    assert model.classifier_temperature_ == 1.0  # no validation cells: uncalibrated, as documented
    assert model.get_unknown_scores(progress_bar=False).shape == (zeisel_small.n_obs,)
