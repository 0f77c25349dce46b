"""Resumable training: epoch checkpoints, resume, and checks on the checkpoint."""

import os

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import schyena_tools as st

from ._helpers import TINY


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
