"""The scHyena network: expression adaptor, gene embedding, bidirectional Hyena blocks, heads.

Plain PyTorch, no AnnData or scvi-tools inside: it takes a ``(cells, genes)`` tensor of
log-normalised expression over the model's ordered gene vocabulary and returns per-gene
predictions and a cell embedding. Everything that touches AnnData lives in
:mod:`schyena_tools.module` and :mod:`schyena_tools.model`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._hyena import HyenaBlock


@dataclass
class EncoderOutput:
    """What :class:`SCHyenaEncoder` returns.

    Attributes
    ----------
    hidden
        ``(cells, genes, d_model)`` final token states (after the final LayerNorm).
    predicted_expression
        ``(cells, genes)`` reconstruction of the log-normalised expression of every gene.
    cell_embedding
        ``(cells, d_model)`` expression-weighted mean of ``hidden`` over the measured genes
        whose value the network was shown (see :meth:`SCHyenaEncoder.pool`).

    """

    hidden: torch.Tensor
    predicted_expression: torch.Tensor
    cell_embedding: torch.Tensor


class SCHyenaEncoder(nn.Module):
    """scHyena: every gene of a cell is a token; bidirectional Hyena blocks mix them all.

    Token ``g`` of a cell is ``adaptor(x_g) + gene_embedding[g]``, where the linear adaptor lifts
    the scalar expression ``x_g`` to ``d_model`` channels and the learned gene embedding plays the
    role of a positional encoding. Two learned vectors replace the adaptor output where needed:

    * ``mask_token`` for genes hidden during masked-expression training (their value is unknown
      to the network but the gene was measured);
    * ``missing_token`` for genes of the vocabulary that the dataset did not measure. A missing
      gene is not a zero: it gets its own vector, it is left out of the cell embedding and no
      loss ever scores it.

    The cell embedding pools the final token states over the measured genes, each weighted by its
    log-normalised expression (genes that are off, missing or masked get weight zero; a cell
    with no counts falls back to the plain mean over measured genes). We pool rather than read a
    CLS token because the long filters decay with distance, so one token at the end of a
    20,000-gene sequence would see the far end only weakly. We weight by expression because a
    plain mean over 20,000 tokens, 85% of them zeros, reduces at initialisation to a function of
    the cell's mean expression (a one-dimensional summary that mostly tracks library size),
    while the weighted mean starts as a projection of the whole expression profile onto the gene
    embeddings and only improves from there (measured on the bundled Zeisel 550-cell data with
    an untrained network: 10-nearest-neighbour agreement with the authors' subclasses 0.37 for
    the plain mean, 0.51 for the weighted one). Genes that are off still shape the embedding
    through the context their tokens give the expressed genes in the Hyena blocks. The gene
    embedding decides how much the pooled vector says about *which* genes are expressed: see
    :meth:`add_principal_axes`, the data-dependent start the model class uses.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary (sequence length).
    d_model
        Channel width of every token.
    n_layers
        Number of Hyena blocks.
    order
        Hyena order (number of gates and long convolutions per block).
    mlp_ratio
        Hidden width of each block's MLP, as a multiple of ``d_model``.
    filter_hidden_dim
        Width of the implicit filter MLP.
    dropout
        Dropout inside the blocks.
    gradient_checkpointing
        Recompute each block's activations in the backward pass instead of storing them: saves
        memory when training at full length, at the cost of about one more forward pass.
    mixer
        ``"hyena"`` (default) or ``"attention"``: the latter replaces every Hyena operator by
        exact multi-head softmax attention and leaves everything else identical; it is the
        quadratic baseline of ``benchmarks/speed.py``, not a model to train at 20,000 genes.
    attention_heads
        Number of heads when ``mixer="attention"``.
    cells_per_chunk
        Run the blocks on at most this many cells at a time (same results:
        every cell is computed on its own). ``None`` (default) chooses on CPU by
        :func:`cpu_cells_per_chunk` so that one chunk's working set stays in the processor's
        cache, and runs the whole batch at once on GPUs. The filters are computed once per
        forward and shared by the chunks; the final norm, the value head and the pooling run on
        the whole batch.

    Notes
    -----
    Speed options: :meth:`compile_blocks` compiles every block with :func:`torch.compile`
    (falling back to eager with a warning if compilation fails); ``torch.autocast`` with
    ``bfloat16`` or ``float16`` runs the projections and MLPs in half precision while the long
    convolutions stay in float32; ``gradient_checkpointing`` trades compute for memory in
    training. See ``docs/benchmarks/speed.md``.

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
        mixer: str = "hyena",
        attention_heads: int = 4,
        cells_per_chunk: int | None = None,
    ):
        super().__init__()
        if cells_per_chunk is not None and cells_per_chunk < 1:
            raise ValueError(f"cells_per_chunk must be a positive integer or None, got {cells_per_chunk}")
        if n_genes < 2:
            raise ValueError(f"n_genes must be at least 2, got {n_genes}")
        self.n_genes = n_genes
        self.d_model = d_model
        self.gradient_checkpointing = gradient_checkpointing
        self.mixer = mixer
        self.order = order
        self.cells_per_chunk = cells_per_chunk
        mixer_kwargs = (
            {"order": order, "hidden_dim": filter_hidden_dim}
            if mixer == "hyena"
            else {"attention_heads": attention_heads}
        )
        self.adaptor = nn.Linear(1, d_model)
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        nn.init.normal_(self.gene_embedding.weight, std=0.02)
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.missing_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(
            [
                HyenaBlock(d_model, mlp_ratio=mlp_ratio, dropout=dropout, mixer=mixer, **mixer_kwargs)
                for _ in range(n_layers)
            ]
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.value_head = nn.Linear(d_model, 1)
        # compiled callables of the blocks (a plain list: not submodules, state_dict unchanged)
        self._compiled_blocks: list | None = None
        self._compile_checked = False

    @torch.no_grad()
    def add_principal_axes(self, expression: torch.Tensor, scale: float = 10.0) -> None:
        """Add each gene's loadings on the leading principal axes of ``expression`` to its embedding.

        ``expression`` is ``(cells, n_genes)`` log-normalised data in vocabulary order. The
        ``d_model`` leading axes, each weighted by its singular value relative to the first, are
        scaled so that 99% of genes get a loading vector of norm at most ``scale`` (the
        adaptor's output for an expressed gene is of order 1-10): genes that co-vary across
        cells start with similar embeddings, and genes that do not vary stay near the random
        start. A data-dependent initialisation, used once before the first pre-training.
        """
        n_axes = min(self.d_model, *expression.shape)
        if n_axes < 1:
            return
        _, singular, axes = torch.pca_lowrank(expression.float(), q=n_axes, center=True)
        loadings = axes * (singular / singular[0].clamp_min(1e-12))
        norm_99 = torch.quantile(loadings.norm(dim=1), 0.99).clamp_min(1e-12)
        weight = self.gene_embedding.weight
        weight[:, :n_axes] += (scale * loadings / norm_99).to(weight)

    def __getstate__(self):
        # compiled callables do not pickle or deep-copy; a copy starts uncompiled
        state = self.__dict__.copy()
        state["_compiled_blocks"] = None
        return state

    def compile_blocks(self, enabled: bool = True, **compile_kwargs) -> SCHyenaEncoder:
        """Compile every block with :func:`torch.compile`; returns ``self``.

        The blocks are compiled, not the whole encoder, so the module keeps its type, its
        attributes and its ``state_dict`` keys, and gradient checkpointing still works block by
        block. Compilation happens at the first forward (and again for each new input shape,
        unless ``dynamic=True``). If it fails there (no C compiler, unsupported backend...), a
        :class:`RuntimeWarning` says why and the encoder goes on in eager mode with identical
        results.

        Parameters
        ----------
        enabled
            ``False`` removes the compiled blocks again.
        compile_kwargs
            Passed to :func:`torch.compile` (``mode``, ``dynamic``, ``backend``, ``fullgraph``...).

        """
        if not enabled:
            self._compiled_blocks = None
            return self
        self._compiled_blocks = [torch.compile(block, **compile_kwargs) for block in self.blocks]
        self._compile_checked = False
        return self

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`compile_blocks` is active (and has not fallen back to eager)."""
        return self._compiled_blocks is not None

    def _run_blocks(self, hidden: torch.Tensor, prepared: list | None = None) -> torch.Tensor:
        blocks = self._compiled_blocks if self._compiled_blocks is not None else self.blocks
        for i, block in enumerate(blocks):
            extra = () if prepared is None else (prepared[i],)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(block, hidden, *extra, use_reentrant=False)
            else:
                hidden = block(hidden, *extra)
        return hidden

    def chunk_size(self, n_cells: int, device: torch.device) -> int:
        """How many cells one chunk of :meth:`forward` holds (see ``cells_per_chunk``)."""
        if self.cells_per_chunk is not None:
            return self.cells_per_chunk
        if device.type != "cpu" or self._compiled_blocks is not None:
            return max(n_cells, 1)
        return cpu_cells_per_chunk(
            self.n_genes, self.d_model, self.order if self.mixer == "hyena" else 0, torch.is_grad_enabled()
        )

    def embed_tokens(
        self,
        expression: torch.Tensor,
        masked: torch.Tensor | None = None,
        missing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(cells, genes)`` values -> ``(cells, genes, d_model)`` input tokens."""
        tokens = self.adaptor(expression.unsqueeze(-1))
        if masked is not None:
            tokens = torch.where(masked.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        if missing is not None:
            missing = missing.expand_as(expression)
            tokens = torch.where(missing.unsqueeze(-1), self.missing_token.to(tokens.dtype), tokens)
        return tokens + self.gene_embedding.weight.to(tokens.dtype)

    def forward(
        self,
        expression: torch.Tensor,
        masked: torch.Tensor | None = None,
        missing: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the encoder.

        Parameters
        ----------
        expression
            ``(cells, n_genes)`` log-normalised expression, in vocabulary order.
        masked
            Optional ``(cells, n_genes)`` bool, True where the value is hidden from the network.
        missing
            Optional ``(n_genes,)`` or ``(cells, n_genes)`` bool, True where the gene was not
            measured. Values at missing (or masked) positions are never read.

        """
        if expression.dim() != 2 or expression.shape[1] != self.n_genes:
            raise ValueError(
                f"expected expression of shape (cells, {self.n_genes}), got {tuple(expression.shape)}"
            )
        chunk = self.chunk_size(expression.shape[0], expression.device)
        if expression.shape[0] <= chunk:
            hidden = self._encode(expression, masked, missing)
        else:
            length = expression.shape[1]
            prepared = [block.prepare(length) for block in self.blocks]
            hidden = None
            for start in range(0, expression.shape[0], chunk):
                part = self._encode(
                    expression[start : start + chunk],
                    None if masked is None else masked[start : start + chunk],
                    missing if missing is None or missing.dim() == 1 else missing[start : start + chunk],
                    prepared,
                )
                if hidden is None:
                    hidden = part.new_empty((expression.shape[0], *part.shape[1:]))
                # written into one batch-sized tensor as it comes (autograd records the copies),
                # so no chunk output outlives its copy and there is no concatenation peak
                hidden[start : start + chunk] = part
                del part
        # per token and per cell, cheap: on the whole batch
        hidden = self.final_norm(hidden)
        return EncoderOutput(
            hidden=hidden,
            predicted_expression=self.value_head(hidden).squeeze(-1),
            cell_embedding=self.pool(hidden, self.pooling_weights(expression, masked, missing)),
        )

    def _encode(self, expression, masked, missing, prepared: list | None = None) -> torch.Tensor:
        """The blocks' output token states of one chunk of cells."""
        hidden = self.embed_tokens(expression, masked, missing)
        if self._compiled_blocks is not None and not self._compile_checked:
            try:
                hidden_out = self._run_blocks(hidden, prepared)
            except Exception as err:  # compilation errors come in many types
                warnings.warn(
                    f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
                    "falling back to the eager encoder",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._compiled_blocks = None
                hidden_out = self._run_blocks(hidden, prepared)
            else:
                self._compile_checked = True
            return hidden_out
        return self._run_blocks(hidden, prepared)

    @staticmethod
    def pooling_weights(
        expression: torch.Tensor,
        masked: torch.Tensor | None = None,
        missing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-gene pooling weights: the visible log-normalised expression, else uniform.

        Masked and missing genes get weight zero (their values are not known to the network);
        a cell with no visible expression gets equal weights over its measured genes.
        """
        visible = torch.ones_like(expression, dtype=torch.bool)
        if masked is not None:
            visible = visible & ~masked
        if missing is not None:
            visible = visible & ~missing.expand_as(expression)
        weights = expression.clamp_min(0.0) * visible
        empty = weights.sum(dim=1, keepdim=True) <= 0
        fallback = visible if missing is None else (~missing).expand_as(expression)
        return torch.where(empty, fallback.to(weights.dtype), weights)

    @staticmethod
    def pool(hidden: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted mean of token states over genes; plain mean when ``weights`` is None."""
        if weights is None:
            return hidden.mean(dim=1)
        weights = weights.to(hidden.dtype)
        total = weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("bl,bld->bd", weights, hidden) / total


#: Bytes of one Hyena operator's projected streams, ``(order + 1) * d_model * L`` float32 values,
#: that one chunk of cells may hold on CPU: inference and training. Measured with
#: ``benchmarks/speed.py`` (default model, 19,972 genes, 2-core AMD EPYC with a 32 MB L3 cache):
#: one cell per chunk in inference, two in training (the backward's per-chunk overhead is higher).
CPU_CHUNK_BYTES = {"inference": 16 * 2**20, "training": 32 * 2**20}


def cpu_cells_per_chunk(n_genes: int, d_model: int, order: int, training: bool) -> int:
    """Cells per chunk on CPU: as many as keep one operator's streams within :data:`CPU_CHUNK_BYTES`.

    A batch of 16 cells at 19,972 genes makes every pass of the Hyena operator read and write
    about 250 MB, far out of cache; one or two cells at a time keep the FFT buffers, gates and
    projections in the last-level cache, which on a 2-core CPU embeds about twice as fast.
    """
    per_cell = (order + 1) * d_model * n_genes * 4
    budget = CPU_CHUNK_BYTES["training" if training else "inference"]
    return max(1, budget // max(per_cell, 1))


def compile_encoder(encoder: SCHyenaEncoder, **compile_kwargs) -> SCHyenaEncoder:
    """Compile the blocks of ``encoder`` in place with :func:`torch.compile` and return it.

    Shorthand for :meth:`SCHyenaEncoder.compile_blocks`; falls back to eager with a
    :class:`RuntimeWarning` if compilation fails at the first forward.
    """
    return encoder.compile_blocks(**compile_kwargs)
