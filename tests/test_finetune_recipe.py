"""The default fine-tuning recipe: epochs from the data size, warm-up and cosine, head learning
rate, early stopping with the best epoch restored, and a warning when the classifier collapses."""

import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import schyena_tools as st
from schyena_tools.model._classification import CLASSIFIER_TARGET_STEPS, classifier_epochs
from schyena_tools.model._training_plan import lr_factor

from ._helpers import TINY

QUIET = dict(enable_progress_bar=False)


def test_lr_factor_warms_up_then_decays_along_a_cosine():
    total = 100
    factors = [lr_factor(step, total, 0.1, True) for step in range(total)]
    np.testing.assert_allclose(factors[:10], np.arange(1, 11) / 10)  # linear warm-up over 10 steps
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))  # then only down
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_factor(total, total, 0.1, True) == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor(s, total, 0.0, False) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_classifier_epochs_follow_the_data_size():
    assert classifier_epochs(150, 16) == math.ceil(CLASSIFIER_TARGET_STEPS / 10)
    assert classifier_epochs(3000, 16) == 2  # at least two passes
    assert classifier_epochs(5, 16) == 100  # at most 100
    assert classifier_epochs(150, 16) > classifier_epochs(600, 16)


class _RecordValidation(Callback):
    """Validation loss and a copy of the weights at the end of every validation."""

    def __init__(self):
        self.losses, self.states = [], []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.losses.append(float(trainer.callback_metrics["validation_loss"]))
        self.states.append({k: v.detach().clone() for k, v in pl_module.module.state_dict().items()})


def test_best_validation_epoch_is_restored_and_head_learns_faster(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    record = _RecordValidation()
    # lr 3e-2 makes the validation loss go up and down, so the last epoch is rarely the best
    model.train_classifier(
        max_epochs=6, lr=3e-2, train_size=0.9, restore_best=True, callbacks=[record], **QUIET
    )
    best = int(np.argmin(record.losses))
    assert model.classifier_best_epoch_ == best
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, record.states[best][name], rtol=0, atol=0, msg=name)
    if best != len(record.losses) - 1:  # restoring changed something
        assert any(
            not torch.equal(value, record.states[-1][name])
            for name, value in model.module.state_dict().items()
        )
    # two parameter groups: the encoder at lr, the heads at lr x head_lr_factor (10 by default)
    groups = model.trainer.optimizers[0].param_groups
    assert [g["initial_lr"] for g in groups] == pytest.approx([3e-2, 3e-1])


def test_without_restore_the_last_epoch_is_kept(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    record = _RecordValidation()
    model.train_classifier(max_epochs=3, train_size=0.9, callbacks=[record], **QUIET)
    assert model.classifier_best_epoch_ is None
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, record.states[-1][name], rtol=0, atol=0, msg=name)


def test_early_stopping_stops_when_validation_stops_improving(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(
        max_epochs=15, lr=3e-2, train_size=0.9, early_stopping=True, early_stopping_patience=2, **QUIET
    )
    epochs_run = len(model.phase_history_["classify"]["train_loss"])
    assert epochs_run < 15


def test_default_is_the_probe_alone(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train_classifier(**QUIET)
    assert model.is_classifier_trained_ and "classify" not in model.phase_history_


def test_without_probe_epochs_come_from_the_data_size(zeisel_small, monkeypatch):
    import schyena_tools.model._classification as classification

    # a small step budget, so that the test stays short: 63 training cells x 16 = 4 steps/epoch
    monkeypatch.setattr(classification, "classifier_epochs", lambda n, bs: classifier_epochs(n, bs, 12))
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    # every labelled cell trained on: 70 cells x 16 = 5 steps/epoch
    model.train_classifier(linear_probe=False, **QUIET)
    assert len(model.phase_history_["classify"]["train_loss"]) == classifier_epochs(70, 16, 12) == 3


def test_a_collapsed_probe_says_so_from_its_own_predictions(zeisel_small, monkeypatch):
    """The probe-only classifier checks for collapse on the probe's in-sample predictions."""
    cell_type = zeisel_small.obs["cell_type"].astype(str)
    kept = cell_type.unique()[:2]  # two classes as they are, the other five merged: the commonest
    zeisel_small.obs["label"] = np.where(cell_type.isin(kept), cell_type, "rest")
    st.SCHyena.setup_anndata(zeisel_small, labels_key="label")
    model = st.SCHyena(zeisel_small, **TINY)
    passes = []
    original = type(model)._class_probabilities

    def counted(self, *args, **kwargs):
        passes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "_class_probabilities", counted)
    # A penalty this strong leaves only the bias: the commonest class for every cell.
    with pytest.warns(UserWarning, match="predicts 'rest' for every one of the 70 training"):
        model.train_classifier(probe_penalty=1e9, **QUIET)
    assert passes == []  # no second inference pass over the training cells
    # The probe's in-sample predictions are the trained head's.
    codes = model._fit_linear_probe(np.arange(zeisel_small.n_obs), None, 1.0, show_progress=False)
    predicted = model.predict(indices=np.arange(zeisel_small.n_obs), progress_bar=False)
    assert list(np.asarray(model._label_classes(), dtype=object)[codes]) == list(predicted)


def test_a_collapsed_classifier_says_so(zeisel_small, monkeypatch):
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    classes = model._label_classes()

    def one_hot(labels):
        return np.eye(len(classes))[[classes.index(label) for label in labels]]

    # Whatever it learned, pretend its head predicts one class for every cell...
    monkeypatch.setattr(
        type(model),
        "_class_probabilities",
        lambda self, adata, cells, batch_size: one_hot(["astrocytes_ependymal"] * len(cells)),
    )
    with pytest.warns(UserWarning, match="predicts 'astrocytes_ependymal' for every one of the 70 training"):
        model.train_classifier(max_epochs=2, **QUIET)
    with pytest.warns(UserWarning, match="for every one of the 7 validation cells"):
        model.train_classifier(max_epochs=2, train_size=0.9, **QUIET)
    # ...and no warning when the predictions vary.
    monkeypatch.undo()
    model = st.SCHyena(zeisel_small, **TINY)
    monkeypatch.setattr(
        type(model),
        "_class_probabilities",
        lambda self, adata, cells, batch_size: one_hot(zeisel_small.obs["cell_type"].to_numpy()[cells]),
    )
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*predicts.*for every one")
        model.train_classifier(max_epochs=2, **QUIET)


def test_augmentation_masks_in_training_steps_only():
    from scvi import REGISTRY_KEYS

    from schyena_tools.model import SCHyenaTrainingPlan
    from schyena_tools.module import SCHyenaModule

    module = SCHyenaModule(n_genes=40, n_labels=3, **TINY)
    plan = SCHyenaTrainingPlan(
        module, objective="classify", augment_kwargs={"mask_ratio": 0.5, "zero_mask_ratio": 0.05}
    )
    counts = torch.poisson(torch.full((6, 40), 2.0))
    tensors = {REGISTRY_KEYS.X_KEY: counts, REGISTRY_KEYS.LABELS_KEY: torch.zeros(6, 1)}
    module.train()
    inference, _, _ = plan.forward(tensors, loss_kwargs=plan.loss_kwargs)
    assert inference["masked"] is not None and inference["masked"].any()
    module.eval()  # validation (and prediction) see every value
    inference, _, _ = plan.forward(tensors, loss_kwargs=plan.loss_kwargs)
    assert inference["masked"] is None


def test_label_smoothing_reaches_the_cross_entropy():
    from scvi import REGISTRY_KEYS

    from schyena_tools.module import SCHyenaModule

    module = SCHyenaModule(n_genes=40, n_labels=3, **TINY).eval()
    counts = torch.poisson(torch.full((6, 40), 2.0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2.0]).reshape(-1, 1)
    tensors = {REGISTRY_KEYS.X_KEY: counts, REGISTRY_KEYS.LABELS_KEY: labels}
    _, _, plain = module(tensors, loss_kwargs={"objective": "classify"})
    _, _, smoothed = module(tensors, loss_kwargs={"objective": "classify", "label_smoothing": 0.2})
    logits = module.inference(counts)["logits"]
    expected = torch.nn.functional.cross_entropy(logits, labels.reshape(-1).long(), label_smoothing=0.2)
    torch.testing.assert_close(smoothed.loss, expected)
    assert not torch.allclose(plain.loss, smoothed.loss)
