"""Output heads that read the cell embedding (plain PyTorch)."""

from __future__ import annotations

import torch
from torch import nn


class CellExpressionHead(nn.Module):
    """Predict every gene's expression from the cell embedding alone.

    ``prediction[c, g] = <cell_proj(e_c), gene_proj(w_g)> + bias_g``, where ``e_c`` is the cell
    embedding and ``w_g`` the gene embedding of the encoder. Trained alongside masked
    expression modelling, it makes the pooled cell embedding carry the cell's expression program
    (the idea of scGPT's "masked value prediction for cell modelling"). Without it nothing in
    the per-gene objective asks the pooled vector to be informative, and a mean over 20,000
    token states mostly tracks library size.

    Costs ``O(cells x genes x d)``, small next to the encoder.
    """

    def __init__(self, d_model: int, n_genes: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or d_model
        self.cell_proj = nn.Sequential(
            nn.Linear(d_model, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.gene_proj = nn.Linear(d_model, hidden_dim)
        self.gene_bias = nn.Parameter(torch.zeros(n_genes))

    def forward(self, cell_embedding: torch.Tensor, gene_embedding: torch.Tensor) -> torch.Tensor:
        """``(cells, d)`` and ``(genes, d)`` -> ``(cells, genes)``."""
        return self.cell_proj(cell_embedding) @ self.gene_proj(gene_embedding).T + self.gene_bias
