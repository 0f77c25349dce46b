import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from scipy import sparse

import schyena_tools as st


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _history(train, validation=None):
    history = {
        "train_loss": pd.DataFrame({"train_loss": train}, index=pd.Index(range(len(train)), name="epoch"))
    }
    if validation is not None:
        history["validation_loss"] = pd.DataFrame({"validation_loss": validation})
        history["masked_mse_validation"] = pd.DataFrame({"masked_mse_validation": validation})
    return history


def test_training_history_draws_every_phase_in_sequence():
    phases = {
        "pretrain": _history([3.0, 2.0, 1.5], [3.1, 2.2, 1.8]),
        "classifier": _history([1.0, 0.5], [1.1, 0.7]),
    }
    ax = st.pl.training_history(phases)
    assert isinstance(ax, Axes)
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 2 or line.get_linestyle() == "-"]
    curves = [line for line in lines if line.get_marker() == "o"]
    assert len(curves) == 4
    # the classifier phase starts after the three pre-training epochs
    assert list(curves[2].get_xdata()) == [4, 5]
    np.testing.assert_allclose(curves[3].get_ydata(), [1.1, 0.7])
    assert [t.get_text() for t in ax.texts] == ["pretrain", "classifier"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["train", "validation"]


def test_training_history_after_one_epoch_phases_in_a_subplot_grid():
    import matplotlib.pyplot as plt

    phases = {"pretrain": _history([3.0], [3.1]), "classifier": _history([1.0], [1.1])}
    fig, axes = plt.subplots(2, 2, figsize=(8, 6))
    ax = st.pl.training_history(phases, ax=axes[0, 1])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    for text in ax.texts:  # every phase name inside its own panel
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    # the panel keeps the size of its neighbours (nothing drawn outside it pushed it around)
    assert np.isclose(box.width, axes[0, 0].get_window_extent(renderer).width)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs only
    plt.close(fig)


def test_training_history_of_a_trained_model(trained_small):
    model, _ = trained_small
    ax = st.pl.training_history(model)
    curves = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(curves) == 2  # train and validation of the pre-training phase
    np.testing.assert_allclose(
        curves[0].get_ydata(), model.phase_history_["pretrain"]["train_loss"].iloc[:, 0].astype(float)
    )
    ax = st.pl.training_history(model, metric="masked_mse")
    assert ax.get_ylabel() == "masked mse"


def test_training_history_bad_input_is_explained():
    with pytest.raises(ValueError, match="train it first"):
        st.pl.training_history({})
    phases = {"pretrain": _history([1.0, 0.5])}
    with pytest.raises(KeyError, match="logged metrics: \\['loss'\\]"):
        st.pl.training_history(phases, metric="accuracy")
    with pytest.raises(KeyError, match="no training phase"):
        st.pl.training_history(phases, phases=["imputer"])


def test_imputation_scatter_reports_pearson_on_hidden_entries():
    rng = np.random.default_rng(0)
    observed = rng.gamma(1.0, 1.0, size=(30, 40))
    imputed = observed + rng.normal(0, 0.1, size=observed.shape)
    hidden = rng.random(observed.shape) < 0.2
    imputed[~hidden] = 0.0  # only the hidden entries are judged
    ax = st.pl.imputation_scatter(sparse.csr_matrix(observed), imputed, hidden=hidden, max_points=50)
    expected = np.corrcoef(observed[hidden], imputed[hidden])[0, 1]
    assert f"Pearson r = {expected:.3f}" in ax.get_title()
    assert f"n = {hidden.sum():,}" in ax.get_title()
    assert len(ax.collections[0].get_offsets()) == 50


def test_imputation_scatter_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        st.pl.imputation_scatter(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="hidden"):
        st.pl.imputation_scatter(np.zeros((3, 4)), np.zeros((3, 4)), hidden=np.zeros((3, 4), bool))


def _predicted_adata():
    obs = pd.DataFrame(
        {
            "schyena_prediction": pd.Categorical(["a"] * 5 + ["b"] * 4 + ["c"]),
            "schyena_confidence": [0.9, 0.8, 0.95, 0.7, 0.99, 0.6, 0.5, 0.55, 0.9, 0.4],
        },
        index=[f"cell{i}" for i in range(10)],
    )
    return AnnData(np.zeros((10, 2), dtype=np.float32), obs=obs)


@pytest.mark.parametrize("kind", ["violin", "box"])
def test_prediction_confidence(kind):
    adata = _predicted_adata()
    ax = st.pl.prediction_confidence(adata, kind=kind)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a (5)", "b (4)", "c (1)"]
    if kind == "violin":
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # a and b; c has one cell
    assert ax.get_ylim() == (0, 1.02)


def test_prediction_confidence_bad_keys():
    adata = _predicted_adata()
    with pytest.raises(KeyError, match="no column 'pred'.*available columns"):
        st.pl.prediction_confidence(adata, prediction_key="pred")
    with pytest.raises(KeyError, match="model.predict"):
        st.pl.prediction_confidence(adata, confidence_key="conf")
    adata.obs["text"] = "x"
    with pytest.raises(TypeError, match="numeric"):
        st.pl.prediction_confidence(adata, confidence_key="text")
    with pytest.raises(ValueError, match="kind"):
        st.pl.prediction_confidence(adata, kind="swarm")


def test_confusion_matrix_rows_are_true_types():
    true = pd.Categorical(["x", "x", "x", "y", "y", "z"], categories=["z", "y", "x"])
    predicted = ["x", "x", "y", "y", "y", "w"]
    ax = st.pl.confusion_matrix(true, predicted)
    matrix = ax.images[0].get_array()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z", "y", "x"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["z", "y", "x", "w"]
    np.testing.assert_allclose(matrix, [[0, 0, 0, 1], [0, 1, 0, 0], [0, 1 / 3, 2 / 3, 0]])
    assert "accuracy 66.7%" in ax.get_title()
    assert len(ax.texts) == 4
    counts = st.pl.confusion_matrix(true, predicted, normalize=False, annotate=False).images[0].get_array()
    assert counts.sum() == 6


def test_confusion_matrix_length_mismatch():
    with pytest.raises(ValueError, match="one label per cell"):
        st.pl.confusion_matrix(["a", "b"], ["a"])


def test_plots_draw_on_a_given_axes():
    fig, axes = plt.subplots(1, 2)
    assert st.pl.confusion_matrix(["a", "b"], ["a", "a"], ax=axes[1]) is axes[1]
    assert st.pl.prediction_confidence(_predicted_adata(), ax=axes[0]) is axes[0]
