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
    """Cell-type logits from the encoder: a linear readout of the cell, its genes and their states.

    ``logits = W_cell z(LayerNorm(e)) + W_expr z(x) + W_genes [u . h_g]_g + b``, three linear
    paths into the same logits:

    - the **cell embedding** ``e`` (``d_model`` numbers);
    - the **expression** ``x`` the encoder read, gene by gene (log-normalised, vocabulary
      order; missing genes read as the mean). This is the path a logistic regression on genes
      takes; fine cell types hinge on a handful of marker genes, which a ``d_model``-wide
      summary of 20,000 genes blurs;
    - the **gene states** ``h_g``: one learned scalar per gene token (``u . h_g``, the final
      state of gene ``g`` projected on ``u``; zero for missing genes), the contextualised
      version of the expression path.

    The expression path can also read ``n_extra_genes`` genes outside the vocabulary (a query's
    genes the pre-trained encoder has no token for), appended after the vocabulary's: the
    encoder never reads them, the readout does, as a logistic regression on the query's genes
    would.

    ``z(.)`` standardises each input dimension with a mean and scale held as buffers (identity
    until :meth:`set_standardization` fills them from the training cells, as ``sc.pp.scale``
    does before a logistic regression; clipped at ``clip`` standard deviations).
    :func:`~schyena_tools.model.fit_linear_readout` fits ``W_cell``, ``W_expr`` and ``b`` to
    convergence on frozen features, the linear probe that ``train_classifier`` starts from.
    ``O(genes x classes)`` parameters.

    Heads saved before the expression path existed (version 1) load with it at zero and the
    standardisation at identity, which computes exactly what they computed.

    Parameters
    ----------
    d_model
        Width of the token states and of the cell embedding.
    n_genes
        Vocabulary size.
    n_labels
        Number of classes.
    dropout
        Dropout on the inputs of the head (in training only).
    clip
        Standardised inputs are clipped to ``[-clip, clip]``.
    n_extra_genes
        Genes outside the vocabulary that the expression path reads after the vocabulary's.

    """

    #: State-dict version (1: no expression path, no standardisation buffers).
    _version = 2

    def __init__(
        self,
        d_model: int,
        n_genes: int,
        n_labels: int,
        dropout: float = 0.1,
        clip: float = 10.0,
        n_extra_genes: int = 0,
    ):
        super().__init__()
        self.clip = clip
        self.n_genes = n_genes
        n_inputs = n_genes + n_extra_genes
        self.cell_norm = nn.LayerNorm(d_model)
        self.cell_linear = nn.Linear(d_model, n_labels)
        self.expression_linear = nn.Linear(n_inputs, n_labels, bias=False)
        self.token_projection = nn.Linear(d_model, 1)
        self.gene_linear = nn.Linear(n_genes, n_labels, bias=False)
        self.dropout = nn.Dropout(dropout)
        # Zero weights: the expression path adds nothing until it is fitted or trained.
        nn.init.zeros_(self.expression_linear.weight)
        self.register_buffer("cell_mean", torch.zeros(d_model))
        self.register_buffer("cell_scale", torch.ones(d_model))
        self.register_buffer("expression_mean", torch.zeros(n_inputs))
        self.register_buffer("expression_scale", torch.ones(n_inputs))

    @property
    def out_features(self) -> int:
        """Number of classes."""
        return self.cell_linear.out_features

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args, **kwargs):
        if local_metadata.get("version", 1) < 2:
            # A version-1 head: the new path and buffers take their neutral values.
            neutral = {
                "expression_linear.weight": torch.zeros_like(self.expression_linear.weight),
                "cell_mean": torch.zeros_like(self.cell_mean),
                "cell_scale": torch.ones_like(self.cell_scale),
                "expression_mean": torch.zeros_like(self.expression_mean),
                "expression_scale": torch.ones_like(self.expression_scale),
            }
            for name, value in neutral.items():
                state_dict.setdefault(prefix + name, value)
        _pad_expression_path(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)

    @torch.no_grad()
    def set_standardization(self, cell_embedding: torch.Tensor, expression: torch.Tensor) -> None:
        """Standardise the head's inputs with the mean and standard deviation of these cells.

        ``cell_embedding`` ``(cells, d)`` and ``expression`` ``(cells, genes)`` (missing genes as
        NaN, left out of the statistics). Dimensions that do not vary keep scale 1.
        """
        cells = self.cell_norm(cell_embedding.float())
        self.cell_mean.copy_(cells.mean(0))
        self.cell_scale.copy_(_scale(cells.std(0, unbiased=False)))
        expression = expression.float()
        self.expression_mean.copy_(torch.nan_to_num(expression.nanmean(0), nan=0.0))
        centred = torch.nan_to_num(expression - self.expression_mean, nan=0.0)
        measured = (~torch.isnan(expression)).sum(0).clamp_min(1)
        self.expression_scale.copy_(_scale((centred.square().sum(0) / measured).sqrt()))

    def standardized_inputs(
        self, cell_embedding: torch.Tensor, expression: torch.Tensor, missing: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardised inputs of the two fitted paths: ``(cells, d)`` and ``(cells, genes)``."""
        cells = (self.cell_norm(cell_embedding) - self.cell_mean) / self.cell_scale
        genes = (expression - self.expression_mean) / self.expression_scale
        if missing is not None:
            genes = genes.masked_fill(missing.expand_as(genes), 0.0)
        return cells.clamp(-self.clip, self.clip), genes.clamp(-self.clip, self.clip)

    def forward(
        self,
        cell_embedding: torch.Tensor,
        hidden: torch.Tensor,
        expression: torch.Tensor,
        missing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedding ``(cells, d)``, states ``(cells, genes, d)``, expression -> ``(cells, n_labels)``.

        ``expression`` and ``missing`` cover the vocabulary's genes, then the extra genes.
        """
        cells, genes = self.standardized_inputs(cell_embedding, expression, missing)
        per_gene = self.token_projection(hidden).squeeze(-1)
        if missing is not None:
            token_missing = missing[..., : self.n_genes]
            per_gene = per_gene.masked_fill(token_missing.expand_as(per_gene), 0.0)
        return (
            self.cell_linear(self.dropout(cells))
            + self.expression_linear(self.dropout(genes))
            + self.gene_linear(self.dropout(per_gene))
        )


def _pad_expression_path(head: CellTypeClassifier, state_dict: dict, prefix: str) -> None:
    """A head saved with fewer expression inputs (no extra genes) loads with them at neutral values.

    The extra genes' weights are zero and their standardisation the identity, so the head
    computes what it computed when it was saved.
    """
    key = prefix + "expression_linear.weight"
    saved = state_dict.get(key)
    wanted = head.expression_linear.weight.shape[1]
    if saved is None or saved.shape[1] >= wanted:
        return
    extra = wanted - saved.shape[1]
    state_dict[key] = torch.cat([saved, saved.new_zeros(saved.shape[0], extra)], dim=1)
    for name, fill in (("expression_mean", 0.0), ("expression_scale", 1.0)):
        value = state_dict.get(prefix + name)
        if value is not None and value.shape[0] < wanted:
            state_dict[prefix + name] = torch.cat([value, value.new_full((extra,), fill)])


def _scale(std: torch.Tensor) -> torch.Tensor:
    """Standard deviations as scales: constant dimensions (std ~ 0) keep scale 1."""
    return torch.where(std > 1e-6, std, torch.ones_like(std))


class DoubletClassifier(CellTypeClassifier):
    """Doublet logits: :class:`CellTypeClassifier`'s readout plus one for the cell's depth.

    Two classes, singlet (0) and doublet (1). The same three linear paths as the cell-type
    head (standardised cell embedding, standardised expression, gene states), and a fourth:
    the standardised ``log1p`` of the cell's total counts. Two captured cells carry about twice
    the counts of one, and the encoder never sees depth (every cell is library-size normalised
    before it is read), so the depth goes to the readout directly, as it does in scDblFinder.

    A model saved before this head existed loads it untrained (at its initial values).

    Parameters
    ----------
    d_model
        Width of the token states and of the cell embedding.
    n_genes
        Vocabulary size.
    dropout, clip
        As in :class:`CellTypeClassifier`.

    """

    def __init__(self, d_model: int, n_genes: int, dropout: float = 0.1, clip: float = 10.0):
        super().__init__(d_model, n_genes, 2, dropout=dropout, clip=clip)
        self.depth_linear = nn.Linear(1, 2, bias=False)
        nn.init.zeros_(self.depth_linear.weight)
        self.register_buffer("depth_mean", torch.zeros(1))
        self.register_buffer("depth_scale", torch.ones(1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args, **kwargs):
        if not any(key.startswith(prefix) for key in state_dict):
            # Saved before the doublet head existed: it stays at its initial (untrained) values.
            for name, value in self.state_dict().items():
                state_dict[prefix + name] = value.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)

    @torch.no_grad()
    def set_depth_standardization(self, log_depth: torch.Tensor) -> None:
        """Standardise the depth input with the mean and standard deviation of ``(cells, 1)``."""
        log_depth = log_depth.float().reshape(-1, 1)
        self.depth_mean.copy_(log_depth.mean(0))
        self.depth_scale.copy_(_scale(log_depth.std(0, unbiased=False)))

    def standardized_depth(self, log_depth: torch.Tensor) -> torch.Tensor:
        """``(cells, 1)`` standardised ``log1p`` total counts, clipped like the other inputs."""
        depth = (log_depth.float().reshape(-1, 1) - self.depth_mean) / self.depth_scale
        return depth.clamp(-self.clip, self.clip)

    def forward(
        self,
        cell_embedding: torch.Tensor,
        hidden: torch.Tensor,
        expression: torch.Tensor,
        missing: torch.Tensor | None = None,
        log_depth: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`CellTypeClassifier.forward`, plus ``log_depth`` ``(cells,)`` -> ``(cells, 2)``."""
        logits = super().forward(cell_embedding, hidden, expression, missing)
        if log_depth is not None:
            logits = logits + self.depth_linear(self.standardized_depth(log_depth))
        return logits
