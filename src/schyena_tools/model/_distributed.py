"""Multi-process training (Lightning DDP) with scvi-tools' trainer, made to work for scHyena.

scvi-tools 1.4 runs DDP through Lightning's ``strategy`` argument, but three things stop a plain
``model.train(devices=2, strategy="ddp")`` of scHyena, and each is handled here once so the
user's call stays the plain one:

1. The cells are sharded between processes only when scvi-tools' data splitter is given
   ``distributed_sampler=True``; without it every process gets every cell and the minibatches
   arrive with an extra dimension.
2. Each training phase leaves some heads idle (the classification head during pre-training, the
   cell-expression head during classification). Plain ``"ddp"`` refuses parameters that get no
   gradient; ``"ddp_find_unused_parameters_true"`` allows them.
3. scvi-tools' ``TrainingPlan.compute_and_log_metrics`` runs under ``torch.inference_mode()``;
   Lightning's cross-process reduction of the logged metrics then updates an inference tensor
   in place and fails. :class:`SCHyenaTrainingPlan` logs under ``torch.no_grad()`` instead.
"""

from __future__ import annotations

import logging

import torch
from scvi.train import TrainingPlan

logger = logging.getLogger(__name__)

#: Lightning's DDP strategy names that refuse parameters without a gradient, and their
#: counterparts that accept them.
_ALLOW_UNUSED = {
    "ddp": "ddp_find_unused_parameters_true",
    "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
    "ddp_notebook": "ddp_notebook_find_unused_parameters_true",
    "ddp_fork": "ddp_fork_find_unused_parameters_true",
}


class SCHyenaTrainingPlan(TrainingPlan):
    """scvi-tools' training plan, with metrics logged under ``no_grad`` (works under DDP)."""

    def compute_and_log_metrics(self, loss_output, metrics, mode: str):
        """Log the loss and extra metrics as scvi-tools does, without ``inference_mode``."""
        undecorated = getattr(TrainingPlan.compute_and_log_metrics, "__wrapped__", None)
        if undecorated is None:  # a scvi-tools release without the inference_mode decorator
            return super().compute_and_log_metrics(loss_output, metrics, mode)
        with torch.no_grad():
            return undecorated(self, loss_output, metrics, mode)


def is_distributed(strategy) -> bool:
    """Whether Lightning's ``strategy`` runs data-parallel processes (the DDP family)."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        return "ddp" in strategy
    from lightning.pytorch.strategies import DDPStrategy

    return isinstance(strategy, DDPStrategy)


def distributed_settings(trainer_kwargs: dict, datasplitter_kwargs: dict | None) -> tuple[dict, dict]:
    """Trainer and data-splitter arguments with the DDP fixes applied (copies; inputs unchanged).

    Only acts when ``trainer_kwargs["strategy"]`` is a DDP strategy; a user's explicit
    ``distributed_sampler`` is respected.
    """
    trainer_kwargs = dict(trainer_kwargs)
    datasplitter_kwargs = dict(datasplitter_kwargs or {})
    strategy = trainer_kwargs.get("strategy")
    if not is_distributed(strategy):
        return trainer_kwargs, datasplitter_kwargs
    datasplitter_kwargs.setdefault("distributed_sampler", True)
    if isinstance(strategy, str) and strategy in _ALLOW_UNUSED:
        trainer_kwargs["strategy"] = _ALLOW_UNUSED[strategy]
        logger.info(
            "strategy %r -> %r: each training phase leaves some heads without gradient",
            strategy,
            trainer_kwargs["strategy"],
        )
    return trainer_kwargs, datasplitter_kwargs
