"""The scvi-tools module around the scHyena network: normalisation, gene alignment, masking, losses.

This is the layer between registered tensors and the plain-PyTorch network
(:class:`~schyena_tools.nn.SCHyenaEncoder`). It knows the scvi-tools tensor dictionary and the
training objectives; it knows nothing about AnnData.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from schyena_tools.nn import SCHyenaEncoder
from schyena_tools.nn.heads import CellExpressionHead

OBJECTIVES = ("pretrain",)


def log_normalize(counts: torch.Tensor, target_sum: float) -> torch.Tensor:
    """Library-size normalise each cell to ``target_sum`` and apply ``log1p``.

    The same function runs at training and at inference, so a model never sees its input
    scaled two different ways. Cells with no counts stay at zero (no division by zero).
    """
    library = counts.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return torch.log1p(counts / library * target_sum)


def sample_expression_mask(
    values: torch.Tensor,
    nonzero_ratio: float,
    zero_ratio: float,
    missing: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the entries hidden from the network in masked expression modelling.

    A fraction ``nonzero_ratio`` of each cell's non-zero values and a (smaller) fraction
    ``zero_ratio`` of its zeros are masked, independently per entry. Zeros are masked too so
    the network learns when a gene is really off; fewer of them, because they dominate
    (about 85% of a full-length cell) and would otherwise swamp the loss. Missing genes are never
    masked, because there is no value to score.
    """
    probability = torch.where(values > 0, nonzero_ratio, zero_ratio)
    masked = torch.rand_like(values) < probability
    if missing is not None:
        masked = masked & ~missing
    return masked


class SCHyenaModule(BaseModuleClass):
    """scvi-tools module for scHyena.

    Parameters
    ----------
    n_genes
        Size of the model's gene vocabulary.
    d_model, n_layers, order, mlp_ratio, filter_hidden_dim, dropout, gradient_checkpointing
        Network size; see :class:`~schyena_tools.nn.SCHyenaEncoder`.
    target_sum
        Counts per cell after library-size normalisation (before ``log1p``).
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int = 64,
        n_layers: int = 2,
        order: int = 2,
        mlp_ratio: int = 2,
        filter_hidden_dim: int = 32,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        target_sum: float = 1e4,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.target_sum = target_sum
        self.encoder = SCHyenaEncoder(
            n_genes,
            d_model=d_model,
            n_layers=n_layers,
            order=order,
            mlp_ratio=mlp_ratio,
            filter_hidden_dim=filter_hidden_dim,
            dropout=dropout,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.cell_expression_head = CellExpressionHead(d_model, n_genes)
        # What the training step optimises; the model class sets it for each training phase.
        self.objective = "pretrain"
        self.mask_ratio = 0.15
        self.zero_mask_ratio = 0.015
        # Position in the registered data of each vocabulary gene, -1 where it was not measured.
        # None means the data columns are exactly the vocabulary, in order.
        self.gene_index: torch.Tensor | None = None

    @property
    def embedding_dim(self) -> int:
        """Size of the cell embedding."""
        return self.encoder.d_model

    def align_to_vocabulary(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reorder data columns into vocabulary order; report which vocabulary genes are missing."""
        if self.gene_index is None:
            return counts, None
        index = self.gene_index.to(counts.device)
        missing = index < 0
        aligned = counts[:, index.clamp_min(0)].masked_fill(missing, 0.0)
        return aligned, missing

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {"counts": tensors[REGISTRY_KEYS.X_KEY], "mask_values": self.objective == "pretrain"}

    @auto_move_data
    def inference(self, counts: torch.Tensor, mask_values: bool = False) -> dict:
        """Normalise, align to the vocabulary, optionally mask, and encode.

        Parameters
        ----------
        counts
            ``(cells, genes of the registered data)`` raw counts.
        mask_values
            Hide a random subset of values (masked expression modelling). Only training steps
            ask for it; embeddings and predictions never mask.
        """
        counts = counts.float()
        # Library size over the genes the data measured, before alignment, so that a gene panel
        # that misses part of the vocabulary is not normalised as if the missing genes were zero.
        values = log_normalize(counts, self.target_sum)
        values, missing = self.align_to_vocabulary(values)
        masked = (
            sample_expression_mask(values, self.mask_ratio, self.zero_mask_ratio, missing)
            if mask_values
            else None
        )
        out = self.encoder(values, masked=masked, missing=missing)
        cell_prediction = self.cell_expression_head(out.cell_embedding, self.encoder.gene_embedding.weight)
        return {
            "values": values,
            "masked": masked,
            "missing": missing,
            "predicted_expression": out.predicted_expression,
            "cell_embedding": out.cell_embedding,
            "cell_predicted_expression": cell_prediction,
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    def generative(self, **kwargs) -> dict:
        """scHyena is not generative; kept because scvi-tools' forward calls it."""
        return {}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs) -> LossOutput:
        """Loss of the current ``objective``."""
        if self.objective == "pretrain":
            return self.masked_expression_loss(inference_outputs)
        raise ValueError(f"unknown training objective {self.objective!r}; expected one of {OBJECTIVES}")

    @staticmethod
    def masked_expression_loss(inference_outputs: dict) -> LossOutput:
        """Masked expression modelling loss, per cell, on the log-normalised scale.

        The sum of two mean squared errors: the per-gene head on the masked entries (the
        paper's objective), and the cell-embedding head on every measured gene (so that the
        cell embedding summarises the whole cell; see
        :class:`~schyena_tools.nn.heads.CellExpressionHead`). Both are logged separately as
        ``masked_mse`` and ``cell_mse``.
        """
        masked = inference_outputs["masked"]
        if masked is None:
            raise RuntimeError("masked expression loss needs masked values; set mask_values=True")
        values = inference_outputs["values"]
        masked_weights = masked.float()
        token_error = F.mse_loss(inference_outputs["predicted_expression"], values, reduction="none")
        masked_mse = (token_error * masked_weights).sum(1) / masked_weights.sum(1).clamp_min(1.0)

        missing = inference_outputs["missing"]
        measured = torch.ones_like(values) if missing is None else (~missing).expand_as(values).float()
        cell_error = F.mse_loss(inference_outputs["cell_predicted_expression"], values, reduction="none")
        cell_mse = (cell_error * measured).sum(1) / measured.sum(1).clamp_min(1.0)

        per_cell = masked_mse + cell_mse
        return LossOutput(
            loss=per_cell.mean(),
            reconstruction_loss=per_cell,
            extra_metrics={
                "masked_mse": masked_mse.mean().detach(),
                "cell_mse": cell_mse.mean().detach(),
                "masked_fraction": masked_weights.mean().detach(),
            },
        )
