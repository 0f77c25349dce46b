"""Checkpoints of a training phase: on disk to resume from, in memory to keep the best weights.

:class:`EpochCheckpoint` writes one complete checkpoint at the end of every epoch;
:func:`resolve_checkpoint` and :func:`read_checkpoint` find and check one before a run resumes
from it (see :meth:`schyena_tools.SCHyena.train`). :class:`RestoreBestWeights` keeps the weights
of the epoch with the best validation metric and puts them back when training ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from lightning.pytorch.callbacks import Callback
from scvi.train import TrainingPlan

from ._save_load import load_data_only


class EpochCheckpoint(Callback):
    """Write a Lightning checkpoint at the end of every epoch, keeping the newest one only.

    Each checkpoint is written to a temporary name and renamed into place, and the previous one
    is deleted only after that, so a complete checkpoint exists at every moment. It holds what
    Lightning needs to resume (weights, optimiser state, epoch, loop state) plus the training
    phase (``objective``) and the history so far, which :meth:`SCHyena.train` puts back on
    resume.

    A plain callback rather than Lightning's ``ModelCheckpoint``: scvi-tools' Trainer adds its
    own ``SaveCheckpoint`` (writing to ``./scvi_log``) whenever a ``ModelCheckpoint`` is used.
    """

    OBJECTIVE_KEY = "schyena_objective"
    HISTORY_KEY = "schyena_history"

    def __init__(self, dirpath: str | os.PathLike, objective: str):
        self.dirpath = Path(dirpath)
        self.objective = objective

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        final = self.dirpath / f"{self.objective}-epoch{trainer.current_epoch:05d}.ckpt"
        partial = final.with_name(f".{final.name}.partial")
        trainer.save_checkpoint(partial)
        os.replace(partial, final)
        for older in self.dirpath.glob(f"{self.objective}-epoch*.ckpt"):
            if older != final:
                older.unlink()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.OBJECTIVE_KEY] = self.objective
        history = {
            key: (frame.index.tolist(), frame.to_dict(orient="list"))
            for key, frame in (getattr(trainer.logger, "history", None) or {}).items()
        }
        # The logger receives this epoch's training metrics only after the epoch-end hooks;
        # take them from Lightning's running results (same values the logger gets next).
        try:
            epoch_metrics = trainer._results.metrics(False)["log"]
        except (AttributeError, KeyError):  # internal API; without it the last epoch is missing
            epoch_metrics = {}
        epoch = trainer.current_epoch
        for key, value in epoch_metrics.items():
            index, columns = history.setdefault(key, ([], {key: []}))
            if epoch not in index and key in columns:
                index.append(epoch)
                columns[key].append(float(value))
        # Plain lists, so that the checkpoint loads without unpickling pandas objects.
        checkpoint[self.HISTORY_KEY] = history


class RestoreBestWeights(Callback):
    """Keep the module weights of the best validation epoch; restore them when training ends.

    Parameters
    ----------
    monitor
        Logged validation metric (lower is better), e.g. ``"validation_loss"``.

    After training, ``best_epoch`` is the epoch whose weights the module holds (``None`` when no
    validation ran, and the weights are then those of the last epoch).

    """

    def __init__(self, monitor: str = "validation_loss"):
        self.monitor = monitor
        self.best_value = float("inf")
        self.best_epoch: int | None = None
        self._best_state: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value < self.best_value:
            self.best_value, self.best_epoch = value, trainer.current_epoch
            self._best_state = {k: v.detach().cpu().clone() for k, v in pl_module.module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._best_state is not None:
            pl_module.module.load_state_dict(self._best_state)
            self._best_state = None


def resolve_checkpoint(resume_from: str | os.PathLike, objective: str) -> Path:
    """The checkpoint file ``resume_from`` names (a file, or a ``checkpoint_dir``)."""
    path = Path(resume_from)
    if path.is_dir():
        found = sorted(path.glob(f"{objective}-epoch*.ckpt"))
        if not found:
            raise FileNotFoundError(
                f"resume_from={str(path)!r} holds no {objective!r} checkpoint ({objective}-epoch*.ckpt). "
                f"Checkpoints are written by train(..., checkpoint_dir=...); pass that folder or one "
                f"of its .ckpt files."
            )
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(
            f"resume_from={str(path)!r} does not exist. Pass a checkpoint written by "
            f"train(..., checkpoint_dir=...) (or that folder)."
        )
    return path


def read_checkpoint(
    path: Path, objective: str, training_plan: TrainingPlan, max_epochs: int
) -> dict[str, pd.DataFrame]:
    """Check a checkpoint fits this training plan and phase; return the history saved in it."""
    try:
        checkpoint = load_data_only(path)
    except ValueError:
        raise
    except Exception as error:  # truncated or not a checkpoint: torch raises several types
        raise ValueError(
            f"checkpoint {str(path)!r} is unreadable ({type(error).__name__}: {error}). It may have "
            f"been cut short; delete it and resume from an earlier one, or train from the start."
        ) from error
    if checkpoint.get(EpochCheckpoint.OBJECTIVE_KEY, objective) != objective:
        raise ValueError(
            f"checkpoint {str(path)!r} was written while training "
            f"{checkpoint[EpochCheckpoint.OBJECTIVE_KEY]!r}, not {objective!r}; resume it with the "
            f"training method that wrote it."
        )
    saved = checkpoint.get("state_dict", {})
    expected = training_plan.state_dict()
    differing = [
        key
        for key in set(saved) | set(expected)
        if key not in saved or key not in expected or saved[key].shape != expected[key].shape
    ]
    if differing:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this model: {len(differing)} parameters are "
            f"missing or have another shape (e.g. {sorted(differing)[:3]}). Resume with the model "
            f"settings and genes of the run that wrote it."
        )
    epochs_done = int(checkpoint.get("epoch", -1)) + 1
    if epochs_done >= max_epochs:
        raise ValueError(
            f"checkpoint {str(path)!r} has already trained {epochs_done} epochs; max_epochs={max_epochs} "
            f"leaves nothing to resume. Pass a larger max_epochs."
        )
    return {
        key: pd.DataFrame(columns, index=pd.Index(index, name="epoch"))
        for key, (index, columns) in checkpoint.get(EpochCheckpoint.HISTORY_KEY, {}).items()
    }
