"""Progress bars: training steps within each epoch, and the minibatches of inference calls.

scvi-tools' own bar moves once per epoch, which for scHyena (a handful of long cells per
minibatch) can mean minutes without a sign of life. Training uses Lightning's per-step bar
instead, without the run's version number; inference calls show one bar over their minibatches.
Both use ``tqdm.auto`` (a widget in Jupyter, text in a terminal) and are off with
``enable_progress_bar=False`` / ``progress_bar=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

T = TypeVar("T")


class StepProgressBar(TQDMProgressBar):
    """Lightning's per-step progress bar, showing the loss but not Lightning's ``v_num``."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def with_step_progress(trainer_kwargs: dict) -> dict:
    """Trainer arguments with the per-step bar in place of scvi-tools' per-epoch one (a copy).

    Nothing changes when the bar is off (``enable_progress_bar=False``) or when the caller chose
    a bar (``simple_progress_bar``, or a progress-bar callback of their own).
    """
    trainer_kwargs = dict(trainer_kwargs)
    callbacks = list(trainer_kwargs.get("callbacks") or [])
    own_bar = any(isinstance(callback, TQDMProgressBar) for callback in callbacks)
    if (
        not trainer_kwargs.get("enable_progress_bar", True)
        or "simple_progress_bar" in trainer_kwargs
        or own_bar
    ):
        return trainer_kwargs
    trainer_kwargs["simple_progress_bar"] = False
    trainer_kwargs["callbacks"] = [*callbacks, StepProgressBar()]
    return trainer_kwargs


def progress(items: Iterable[T], description: str, show: bool, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar (``tqdm.auto``) when ``show``; the bar goes once done."""
    if not show:
        yield from items
        return
    with tqdm(items, desc=description, total=total, leave=False, unit="batch") as bar:
        yield from bar
