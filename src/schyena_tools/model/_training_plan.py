"""The training plan of every scHyena phase, and what makes it run under Lightning DDP.

:class:`SCHyenaTrainingPlan` is scvi-tools' ``TrainingPlan`` told which ``objective`` it trains
and with which masking: those go to the module as arguments of each forward pass
(``inference_kwargs``, ``loss_kwargs``), so one module serves every phase without being switched.

Multi-process training (Lightning DDP) with scvi-tools' trainer:

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
   in place and fails. :class:`SCHyenaTrainingPlan` logs under ``torch.no_grad()`` instead (and
   only its own metrics: no VAE terms).
"""

from __future__ import annotations

import logging
import math

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
    """scvi-tools' training plan for one scHyena phase; metrics logged under ``no_grad`` (DDP).

    Parameters
    ----------
    module
        The :class:`~schyena_tools.module.SCHyenaModule`.
    objective
        ``"pretrain"``, ``"classify"`` or ``"impute"``: passed to the module's ``loss``.
    inference_kwargs
        Passed to the module's ``inference`` at every training and validation step (e.g.
        ``{"mask_ratio": 0.15, "zero_mask_ratio": 0.015}`` for pre-training).
    augment_kwargs
        Passed to ``inference`` at training steps only, over ``inference_kwargs``: an
        augmentation (e.g. random masking while fine-tuning a classifier) that validation and
        prediction never see.
    warmup_fraction
        Fraction of the optimiser steps over which the learning rate rises linearly from ~0 to
        ``lr`` (0: no warm-up).
    cosine_decay
        After the warm-up, decay the learning rate to 0 along a half cosine over the remaining
        steps (``max_epochs`` x batches per epoch).
    head_lr_factor
        Learning rate of every parameter outside the encoder (the heads) as a multiple of
        ``lr``: fresh heads on a pre-trained encoder can move faster than the encoder.
    **plan_kwargs
        Passed to :class:`scvi.train.TrainingPlan` (optimiser, learning rate...).

    """

    def __init__(
        self,
        module,
        *,
        objective: str,
        inference_kwargs: dict | None = None,
        augment_kwargs: dict | None = None,
        warmup_fraction: float = 0.0,
        cosine_decay: bool = False,
        head_lr_factor: float = 1.0,
        **plan_kwargs,
    ):
        super().__init__(module, objective=objective, **plan_kwargs)
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not head_lr_factor > 0:
            raise ValueError(f"head_lr_factor must be positive, got {head_lr_factor}")
        self.objective = objective
        self.inference_kwargs = dict(inference_kwargs or {})
        self.augment_kwargs = dict(augment_kwargs or {})
        self.warmup_fraction = warmup_fraction
        self.cosine_decay = cosine_decay
        self.head_lr_factor = head_lr_factor

    def forward(self, *args, **kwargs):
        """The module's forward with this phase's masking (and augmentation, in training)."""
        augment = self.augment_kwargs if self.module.training else {}
        kwargs.setdefault("inference_kwargs", {**self.inference_kwargs, **augment})
        return self.module(*args, **kwargs)

    def configure_optimizers(self):
        """scvi-tools' optimiser, with head/encoder learning rates and a warm-up/cosine schedule."""
        if self.warmup_fraction == 0.0 and not self.cosine_decay and self.head_lr_factor == 1.0:
            return super().configure_optimizers()
        encoder = [p for p in self.module.encoder.parameters() if p.requires_grad]
        in_encoder = {id(p) for p in encoder}
        heads = [p for p in self.module.parameters() if p.requires_grad and id(p) not in in_encoder]
        groups = [
            {"params": params, "lr": lr}
            for params, lr in ((encoder, self.lr), (heads, self.lr * self.head_lr_factor))
            if params
        ]
        optimizer_cls = torch.optim.AdamW if self.optimizer_name == "AdamW" else torch.optim.Adam
        optimizer = optimizer_cls(groups, lr=self.lr, weight_decay=self.weight_decay, eps=self.eps)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, self.warmup_fraction, self.cosine_decay)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def compute_and_log_metrics(self, loss_output, metrics, mode: str):
        """Log the objective's own metrics (``masked_mse_train``, ``accuracy_validation``...).

        Replaces scvi-tools' version, which also logs a VAE's ELBO, KL terms and reconstruction
        loss (``elbo_*``, ``kl_local_*``, ``kl_global_*``, ``reconstruction_loss_*``): here they
        mean nothing (the KL terms are always 0, the reconstruction loss is the loss), and they
        cluttered ``model.history``. The loss itself is logged by the training and validation
        steps (``train_loss``, ``validation_loss``). Logged under ``torch.no_grad()``, not
        ``inference_mode`` (see the module notes: DDP's metric reduction).
        """
        with torch.no_grad():
            for key in loss_output.extra_metrics_keys:
                value = loss_output.extra_metrics[key]
                if isinstance(value, torch.Tensor):
                    if value.dim() != 0:
                        continue  # only scalars are metrics
                    value = value.detach()
                self.log(
                    f"{key}_{mode}",
                    value,
                    on_step=self.on_step,
                    on_epoch=self.on_epoch,
                    batch_size=loss_output.n_obs_minibatch,
                    sync_dist=self.use_sync_dist,
                )


def lr_factor(step: int, total_steps: int, warmup_fraction: float, cosine_decay: bool) -> float:
    """Learning-rate multiplier at optimiser ``step`` (0-based) of ``total_steps``.

    Linear warm-up over the first ``warmup_fraction`` of the steps, then constant, or a half
    cosine down to 0 at ``total_steps`` with ``cosine_decay``.
    """
    warmup = math.ceil(warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if not cosine_decay:
        return 1.0
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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
