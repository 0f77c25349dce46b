"""Output heads on the encoder (plain PyTorch): cell expression and cell type."""

from __future__ import annotations

import torch
from torch import nn


class CellStandardize(nn.BatchNorm1d):
    """Standardise each embedding dimension across cells (batch normalisation without affine).

    The pooled embedding of a cell averages thousands of token states, so its cell-to-cell
    variation is small next to the part shared by every cell (about 10% of it, measured on the
    Zeisel data); a head reading it raw learns slowly. Minibatch statistics in training, running
    statistics otherwise, and also for a training minibatch of one cell (where batch statistics
    are undefined).
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(cells, d)`` -> ``(cells, d)``."""
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, eps=self.eps)
        return super().forward(x)


class CellExpressionHead(nn.Module):
    """Predict every gene's expression from the cell embedding alone.

    ``prediction[c, g] = <decoder_g, proj(e_c)> + bias_g``: a small MLP on the cell embedding
    ``e_c`` followed by a linear decoder with one weight vector and one bias per gene. Trained
    alongside masked expression modelling, it makes the pooled cell embedding carry the cell's
    expression program (the idea of scGPT's "masked value prediction for cell modelling", and
    of the decoder of a linear autoencoder, whose optimum is PCA). Without it nothing in the
    per-gene objective asks the pooled vector to be informative, and a mean over 20,000 token
    states mostly tracks library size.

    The decoder has its own per-gene weights rather than reusing the encoder's gene embedding:
    with gene embeddings initialised small, a bilinear ``<proj(e_c), proj(w_g)>`` starts out
    the same for every gene, so the only thing it can fit early is a per-cell offset (sequencing
    depth); measured on the bundled Zeisel data, that head stayed at the loss of predicting
    each gene's mean for two epochs. Call :meth:`initialize_gene_means` with the data's mean
    expression before training so the decoder starts from the trivial prediction and spends
    its steps on what varies between cells.

    Costs ``O(cells x genes x hidden_dim)``, small next to the encoder.
    """

    def __init__(self, d_model: int, n_genes: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or d_model
        self.cell_proj = nn.Sequential(CellStandardize(d_model), nn.Linear(d_model, hidden_dim), nn.GELU())
        self.decoder = nn.Linear(hidden_dim, n_genes)
        # Zero decoder weights: the head starts at exactly the per-gene mean (see
        # initialize_gene_means). Random weights would add noise across 20,000 outputs that
        # costs more loss than the cell signal is worth, and the first hundred steps would go
        # into removing it.
        nn.init.zeros_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    @torch.no_grad()
    def initialize_gene_means(self, gene_means: torch.Tensor) -> None:
        """Set the per-gene bias to ``gene_means`` (mean log-normalised expression per gene)."""
        self.decoder.bias.copy_(gene_means.to(self.decoder.bias))

    def forward(self, cell_embedding: torch.Tensor) -> torch.Tensor:
        """``(cells, d)`` -> ``(cells, genes)``."""
        return self.decoder(self.cell_proj(cell_embedding))


class CellTypeClassifier(nn.Module):
    """Cell-type logits from the encoder output: the cell embedding plus a gene-wise readout.

    ``logits = W_cell LayerNorm(cell_embedding) + W_genes [u . h_g]_g + b``: a linear layer on
    the cell embedding, and a linear layer over one learned scalar per gene token (``u . h_g``,
    the final state of gene ``g`` projected on ``u``; zero for missing genes). The mean-pooled
    embedding alone is a ``d_model``-dimensional summary of thousands of genes; fine-grained
    types (tens of subclasses) hinge on a handful of marker genes, and the gene-wise readout
    lets the head weigh each gene's contextualised state directly, as a logistic regression on
    genes would, while the encoder supplies the context. ``O(genes x classes)`` parameters.

    Parameters
    ----------
    d_model
        Width of the token states and of the cell embedding.
    n_genes
        Vocabulary size.
    n_labels
        Number of classes.
    dropout
        Dropout on both inputs of the head.

    """

    def __init__(self, d_model: int, n_genes: int, n_labels: int, dropout: float = 0.1):
        super().__init__()
        self.cell_norm = nn.LayerNorm(d_model)
        self.cell_linear = nn.Linear(d_model, n_labels)
        self.token_projection = nn.Linear(d_model, 1)
        self.gene_linear = nn.Linear(n_genes, n_labels, bias=False)
        self.dropout = nn.Dropout(dropout)

    @property
    def out_features(self) -> int:
        """Number of classes."""
        return self.cell_linear.out_features

    def forward(
        self, cell_embedding: torch.Tensor, hidden: torch.Tensor, missing: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(cells, d)``, ``(cells, genes, d)`` and optional missing mask -> ``(cells, n_labels)``."""
        per_gene = self.token_projection(hidden).squeeze(-1)
        if missing is not None:
            per_gene = per_gene.masked_fill(missing.expand_as(per_gene), 0.0)
        cell_logits = self.cell_linear(self.dropout(self.cell_norm(cell_embedding)))
        return cell_logits + self.gene_linear(self.dropout(per_gene))
