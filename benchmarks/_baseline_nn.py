# ruff: noqa: E501
"""Frozen copy of the scHyena network as of commit 9cd6428, before the speed work.

Used only by ``benchmarks/speed.py --before-after`` to measure the speed-up of the optimised
:mod:`schyena_tools.nn` side by side in one run, with identical weights (same parameter names).
Do not import from the package.

Original module docstring: the bidirectional Hyena operator: gated, implicit, non-causal long
convolutions over the gene axis.

Plain PyTorch, no AnnData or scvi-tools inside. Shapes follow ``(batch, length, channels)`` at the
module boundary and ``(batch, channels, length)`` inside, where convolutions live.

The operator follows Poli et al. (2023), "Hyena Hierarchy", with one change that scHyena needs:
genes have no causal order, so every long filter is defined on offsets ``-(L-1) .. (L-1)`` and the
convolution is non-causal. Zero padding to an FFT size of at least ``2L - 1`` means no output
position ever receives a contribution that wrapped around the end of the sequence.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=256)
def fast_fft_size(minimum: int) -> int:
    """Smallest integer ``>= minimum`` whose prime factors are only 2, 3 and 5.

    FFT libraries (pocketfft on CPU, cuFFT on GPU) are fastest on such sizes; a prime-length
    transform can be many times slower. For 19,972 genes the padded length 39,943 becomes 40,000
    (2^6 * 5^4) instead of 65,536 for the next power of two.
    """
    if minimum <= 1:
        return 1
    best = 1 << (minimum - 1).bit_length()  # a power of two always qualifies
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < minimum:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def bidirectional_fft_conv(signal: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Non-causal long convolution ``y[i] = sum_j h[i - j] * u[j]`` per channel, by real FFT.

    Parameters
    ----------
    signal
        ``(batch, channels, L)`` input ``u``.
    filters
        ``(channels, 2L - 1)`` filter ``h`` indexed by offset: ``filters[:, L - 1 + t] = h[t]``
        for ``t`` in ``-(L-1) .. L-1``.

    Returns
    -------
    ``(batch, channels, L)`` in the dtype of ``signal``. The transform runs in float32 (or float64
    for float64 inputs) whatever the autocast state, because half-precision FFTs of length 40k lose
    too many digits.
    """
    length = signal.shape[-1]
    if filters.shape[-1] != 2 * length - 1:
        raise ValueError(
            f"filters must have 2L - 1 = {2 * length - 1} taps for a signal of length {length}, "
            f"got {filters.shape[-1]}"
        )
    compute_dtype = torch.float64 if signal.dtype == torch.float64 else torch.float32
    n_fft = fast_fft_size(2 * length - 1)
    # Lay the filter out circularly: non-negative offsets at the start, negative offsets at the
    # end. Then the first L outputs of the circular convolution are the non-causal linear one.
    kernel = filters.to(compute_dtype)
    kernel_circular = torch.cat(
        [
            kernel[:, length - 1 :],  # offsets 0 .. L-1
            kernel.new_zeros(kernel.shape[0], n_fft - (2 * length - 1)),
            kernel[:, : length - 1],  # offsets -(L-1) .. -1
        ],
        dim=-1,
    )
    with torch.autocast(device_type=signal.device.type, enabled=False):
        kernel_f = torch.fft.rfft(kernel_circular, n=n_fft)
        signal_f = torch.fft.rfft(signal.to(compute_dtype), n=n_fft)
        out = torch.fft.irfft(signal_f * kernel_f, n=n_fft)[..., :length]
    return out.to(signal.dtype)


def direct_conv_reference(signal: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """O(L^2) reference for :func:`bidirectional_fft_conv`; only for tests and small L."""
    length = signal.shape[-1]
    offsets = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # i - j
    toeplitz = filters[:, offsets + length - 1]  # (channels, L_out, L_in)
    return torch.einsum("cij,bcj->bci", toeplitz, signal)


class Sin(nn.Module):
    """Sine activation with a learnable frequency per hidden unit, as in SIREN and Hyena."""

    def __init__(self, dim: int, w0: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(w0 * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitLongFilter(nn.Module):
    """Implicit parametrisation of ``n_filters`` long filters over signed offsets.

    ``h[t] = MLP(features(t)) * window(|t|)``. The MLP (sine activations) maps positional
    features of the offset to one value per channel, so the number of parameters does not grow
    with the sequence length. The window ``exp(-decay_c * |t| / L)`` decays symmetrically in both
    directions, with a decay rate per channel spread from slow (global mixing) to fast (local
    mixing); it biases early training towards local structure without forbidding long range.

    Parameters
    ----------
    channels
        Number of output channels (``d_model * order`` in the Hyena operator).
    feature_dim
        Size of the positional features (odd: the normalised offset plus sin/cos bands).
    hidden_dim
        Width of the filter MLP.
    n_hidden_layers
        Number of hidden sine layers of the filter MLP.
    min_decay, max_decay
        Range of the window decay rates (in units of 1/L).
    """

    def __init__(
        self,
        channels: int,
        feature_dim: int = 17,
        hidden_dim: int = 32,
        n_hidden_layers: int = 2,
        sine_frequency: float = 1.0,
        min_decay: float = 0.3,
        max_decay: float = 12.0,
    ):
        super().__init__()
        if feature_dim < 3 or feature_dim % 2 == 0:
            raise ValueError(f"feature_dim must be odd and >= 3, got {feature_dim}")
        self.channels = channels
        self.n_bands = (feature_dim - 1) // 2
        layers: list[nn.Module] = [nn.Linear(feature_dim, hidden_dim), Sin(hidden_dim, sine_frequency)]
        for _ in range(n_hidden_layers - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), Sin(hidden_dim, sine_frequency)]
        layers.append(nn.Linear(hidden_dim, channels, bias=False))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("decay", torch.linspace(min_decay, max_decay, channels), persistent=False)

    def positional_features(self, length: int, device, dtype) -> torch.Tensor:
        """``(2L - 1, feature_dim)`` features of the signed offsets ``-(L-1) .. L-1``."""
        offsets = torch.arange(-(length - 1), length, device=device, dtype=torch.float32)
        scaled = offsets / max(length - 1, 1)  # in [-1, 1]
        # Geometric bands up to ~L/2 cycles so that fine offsets stay distinguishable at 20k genes.
        freqs = torch.exp(torch.linspace(0.0, math.log(max(length / 2, 2.0)), self.n_bands, device=device))
        angles = math.pi * scaled[:, None] * freqs[None, :]
        feats = torch.cat([scaled[:, None], torch.sin(angles), torch.cos(angles)], dim=-1)
        return feats.to(dtype)

    def forward(self, length: int) -> torch.Tensor:
        """Return ``(channels, 2L - 1)`` filters, computed in float32."""
        device = self.decay.device
        with torch.autocast(device_type=device.type, enabled=False):
            feats = self.positional_features(length, device, torch.float32)
            h = self.mlp(feats)  # (2L-1, channels)
            offsets = torch.arange(-(length - 1), length, device=device, dtype=torch.float32).abs()
            window = torch.exp(-self.decay[None, :] * offsets[:, None] / max(length, 1))
            h = h * window
        return h.transpose(0, 1)


class BidirectionalHyenaOperator(nn.Module):
    """Hyena operator of order ``N`` with non-causal implicit long convolutions.

    ``x_1..x_N, v = split(short_conv(in_proj(u)))``; ``z = v``; for ``n`` in ``1..N``:
    ``z = x_n * (h_n conv z + bias_n * z)``; output ``out_proj(z)``.

    Parameters
    ----------
    d_model
        Channel width.
    order
        Number of gates and long convolutions (2, as in Hyena, by default).
    short_kernel
        Width of the depthwise short convolution (odd, centred: non-causal too).
    filter_kwargs
        Passed to :class:`ImplicitLongFilter`.
    """

    def __init__(
        self,
        d_model: int,
        order: int = 2,
        short_kernel: int = 3,
        dropout: float = 0.0,
        **filter_kwargs,
    ):
        super().__init__()
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if short_kernel % 2 == 0:
            raise ValueError(
                f"short_kernel must be odd so the short convolution is centred, got {short_kernel}"
            )
        self.d_model = d_model
        self.order = order
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model)
        self.short_conv = nn.Conv1d(
            (order + 1) * d_model,
            (order + 1) * d_model,
            kernel_size=short_kernel,
            padding=short_kernel // 2,
            groups=(order + 1) * d_model,
        )
        self.long_filter = ImplicitLongFilter(order * d_model, **filter_kwargs)
        self.filter_bias = nn.Parameter(torch.randn(order, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u``: ``(batch, L, d_model)`` -> ``(batch, L, d_model)``."""
        length = u.shape[1]
        streams = self.in_proj(u).transpose(1, 2)  # (B, (N+1)d, L)
        streams = self.short_conv(streams)
        *gates, z = streams.split(self.d_model, dim=1)
        # Filters depend only on L: computed once per forward, shared across the batch.
        filters = self.long_filter(length).view(self.order, self.d_model, 2 * length - 1)
        for n, gate in enumerate(gates):
            conv = bidirectional_fft_conv(z, filters[n])
            z = gate * (conv + self.filter_bias[n][None, :, None] * z)
            z = self.dropout(z)
        return self.out_proj(z.transpose(1, 2))


class HyenaBlock(nn.Module):
    """Pre-norm residual block: ``u + Hyena(LN(u))`` then ``u + MLP(LN(u))``."""

    def __init__(self, d_model: int, mlp_ratio: int = 2, dropout: float = 0.0, **operator_kwargs):
        super().__init__()
        self.norm_mixer = nn.LayerNorm(d_model)
        self.mixer = BidirectionalHyenaOperator(d_model, dropout=dropout, **operator_kwargs)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = u + self.mixer(self.norm_mixer(u))
        return u + self.mlp(self.norm_mlp(u))


# ---- encoder.py as of 9cd6428 ----
from dataclasses import dataclass  # noqa: E402

from torch.utils.checkpoint import checkpoint  # noqa: E402


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
        ``(cells, d_model)`` mean of ``hidden`` over the measured (non-missing) genes.
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

    The cell embedding is the mean of the final token states over measured genes. We pool rather
    than read a CLS token because the long filters decay with distance: a single token at one end
    of a 20,000-gene sequence would see the far end only weakly, while the mean sees every gene
    with equal weight and ignores missing ones exactly.

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
    ):
        super().__init__()
        if n_genes < 2:
            raise ValueError(f"n_genes must be at least 2, got {n_genes}")
        self.n_genes = n_genes
        self.d_model = d_model
        self.gradient_checkpointing = gradient_checkpointing
        self.adaptor = nn.Linear(1, d_model)
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        nn.init.normal_(self.gene_embedding.weight, std=0.02)
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.missing_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(
            [
                HyenaBlock(
                    d_model,
                    mlp_ratio=mlp_ratio,
                    dropout=dropout,
                    order=order,
                    hidden_dim=filter_hidden_dim,
                )
                for _ in range(n_layers)
            ]
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.value_head = nn.Linear(d_model, 1)

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
        hidden = self.embed_tokens(expression, masked, missing)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(block, hidden, use_reentrant=False)
            else:
                hidden = block(hidden)
        hidden = self.final_norm(hidden)
        predicted = self.value_head(hidden).squeeze(-1)
        return EncoderOutput(
            hidden=hidden,
            predicted_expression=predicted,
            cell_embedding=self.pool(hidden, missing),
        )

    @staticmethod
    def pool(hidden: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
        """Mean of token states over measured genes."""
        if missing is None:
            return hidden.mean(dim=1)
        weights = (~missing).expand(hidden.shape[:2]).to(hidden.dtype)
        counts = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.einsum("bl,bld->bd", weights, hidden) / counts
