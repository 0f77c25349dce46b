"""The bidirectional Hyena operator and block: small single-purpose modules over :mod:`._fftconv`.

Plain PyTorch, no AnnData or scvi-tools inside. Shapes follow ``(batch, length, channels)`` at the
module boundary and ``(batch, channels, length)`` inside, where convolutions live.

The operator follows Poli et al. (2023), "Hyena Hierarchy", with one change that scHyena needs:
genes have no causal order, so every long filter is defined on offsets ``-(L-1) .. (L-1)`` and the
convolution is non-causal (see :mod:`schyena_tools.nn._fftconv`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._fftconv import _is_compiling, fast_fft_size, fft_dtype, irfft, long_convolution, pad_filters, rfft


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


def depthwise_short_conv(
    signal: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Centred depthwise convolution of ``(batch, channels, L)`` with zero padding.

    Same result as ``nn.Conv1d(C, C, K, padding=K // 2, groups=C)`` with ``weight`` of shape
    ``(C, 1, K)``, computed as ``K`` fused multiply-adds over shifted views. For the 3-tap
    filters of the Hyena operator this is about 2-3x faster on CPU than the oneDNN depthwise
    kernel and never needs a layout change. Runs in the dtype of ``signal``.
    """
    kernel = weight.shape[-1]
    centre = kernel // 2
    taps = weight.reshape(weight.shape[0], kernel).to(signal.dtype)
    if bias is None:
        out = signal * taps[:, centre : centre + 1]
    else:
        out = torch.addcmul(bias.to(signal.dtype)[:, None], signal, taps[:, centre : centre + 1])
    for k in range(kernel):
        shift = k - centre  # out[l] += w[k] * x[l + shift]
        if shift == 0 or abs(shift) >= signal.shape[-1]:
            continue
        if shift > 0:
            out[..., :-shift].addcmul_(signal[..., shift:], taps[:, k : k + 1])
        else:
            out[..., -shift:].addcmul_(signal[..., :shift], taps[:, k : k + 1])
    return out


class _ShortConvolution(torch.autograd.Function):
    """:func:`depthwise_short_conv` with a hand-written backward.

    Autograd through the shifted in-place multiply-adds saves a copy of each shifted view and
    pads every tap's gradient back to full length (about a dozen passes over the
    ``(batch, channels, L)`` streams). Here only the input is saved, and the backward is one
    short convolution with the taps reversed (the gradient of the input) plus one multiply and
    reduction per tap (the gradient of the taps).
    """

    @staticmethod
    def forward(ctx, signal: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(signal, weight)
        ctx.has_bias = bias is not None
        return depthwise_short_conv(signal, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        signal, weight = ctx.saved_tensors
        kernel = weight.shape[-1]
        centre = kernel // 2
        grad_signal = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # out[l] = sum_k w[k] x[l + k - c]  =>  grad_x[j] = sum_k w[K - 1 - k] g[j + k - c]
            grad_signal = depthwise_short_conv(grad_out, weight.flip(-1), None)
        if ctx.needs_input_grad[1]:
            grad = grad_out.to(signal.dtype)
            taps = []
            for k in range(kernel):
                shift = k - centre
                if abs(shift) >= signal.shape[-1]:
                    taps.append(weight.new_zeros(grad.shape[1]))
                elif shift >= 0:
                    product = torch.mul(grad[..., : grad.shape[-1] - shift], signal[..., shift:])
                    taps.append(product.sum((0, 2), dtype=weight.dtype))
                else:
                    product = torch.mul(grad[..., -shift:], signal[..., :shift])
                    taps.append(product.sum((0, 2), dtype=weight.dtype))
            grad_weight = torch.stack(taps, dim=-1).reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2), dtype=weight.dtype)
        return grad_signal, grad_weight, grad_bias


def short_convolution(signal: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`depthwise_short_conv`, differentiable through a lean custom backward.

    Without autograd (inference) or inside :func:`torch.compile` it is the plain function.
    """
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (signal, weight, bias)
    )
    if not tracked or _is_compiling():
        return depthwise_short_conv(signal, weight, bias)
    return _ShortConvolution.apply(signal, weight, bias)


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
    dropout
        Dropout after each gate.
    cache_filters
        In inference (autograd off) keep the filter spectra of the last sequence length and reuse
        them while the parameters are unchanged (tracked by their version counters and storage).
        The filters depend only on the parameters and ``L``, so embedding many batches computes
        them once. Costs ``order * d_model * (n_fft / 2 + 1)`` complex numbers of memory per layer
        (20 MB per layer for the default model at 19,972 genes).
    filter_kwargs
        Passed to :class:`ImplicitLongFilter`.

    Notes
    -----
    Speed (see ``docs/benchmarks/speed.md``): the projections are batched matrix products straight
    into the ``(batch, channels, L)`` layout that the FFT needs, so no transpose copies are made;
    the short convolution is :func:`short_convolution`; all ``N`` filter spectra are computed
    in one real FFT per forward (shared by the batch), with the bias term ``bias_n * z`` folded
    into the offset-0 tap so it costs nothing per cell. Without autograd the gated convolutions
    run in one reused buffer, in place. Under autocast the projections run in the autocast
    dtype, the gates and the short convolution in the dtype of the projections, and the FFTs in
    float32.

    """

    def __init__(
        self,
        d_model: int,
        order: int = 2,
        short_kernel: int = 3,
        dropout: float = 0.0,
        cache_filters: bool = True,
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
        self.cache_filters = cache_filters
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
        self._spectrum_cache: tuple | None = None

    def __getstate__(self):
        # the spectrum cache is keyed on storage addresses: never carry it into a copy
        state = self.__dict__.copy()
        state["_spectrum_cache"] = None
        return state

    def _filter_state(self) -> tuple | None:
        tensors = [*self.long_filter.parameters(), *self.long_filter.buffers(), self.filter_bias]
        try:
            return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        except RuntimeError:  # inference tensors have no version counter: do not cache
            return None

    def filter_spectra(self, length: int, n_fft: int) -> torch.Tensor:
        """``(order, d_model, n_fft // 2 + 1)`` spectra of the long filters, bias folded in.

        Computed once per forward and shared by the whole batch; reused across forwards in
        inference when ``cache_filters`` is set.
        """
        use_cache = self.cache_filters and not torch.is_grad_enabled() and not _is_compiling()
        state = self._filter_state() if use_cache else None
        use_cache = use_cache and state is not None
        if use_cache and self._spectrum_cache is not None:
            key, spectra = self._spectrum_cache
            if key == (length, n_fft, state):
                return spectra
        with torch.autocast(device_type=self.filter_bias.device.type, enabled=False):
            spectra = rfft(self.padded_filters(length, n_fft), n=n_fft)
        if use_cache:
            self._spectrum_cache = ((length, n_fft, state), spectra)
        else:
            self._spectrum_cache = None
        return spectra

    def padded_filters(self, length: int, n_fft: int) -> torch.Tensor:
        """``(order, d_model, n_fft)`` float32 long filters with the bias folded into tap 0."""
        filters = self.long_filter(length).view(self.order, self.d_model, 2 * length - 1)
        return pad_filters(filters, n_fft, identity_gain=self.filter_bias)

    def _project_in(self, u: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` -> ``(B, (N+1) d, L)`` contiguous, without a transpose copy."""
        weight, bias = self.in_proj.weight, self.in_proj.bias
        batch = u.shape[0]
        return torch.baddbmm(bias[None, :, None], weight.expand(batch, -1, -1), u.transpose(1, 2))

    def _project_out(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, d, L)`` (possibly strided) -> ``(B, L, d)``."""
        weight, bias = self.out_proj.weight, self.out_proj.bias
        return torch.baddbmm(bias, z.transpose(1, 2), weight.t().expand(z.shape[0], -1, -1))

    def _runs_inplace(self) -> bool:
        """Whether :meth:`forward` takes the autograd-free path (cached spectra, one buffer)."""
        dropout_on = self.training and self.dropout.p > 0
        return not torch.is_grad_enabled() and not _is_compiling() and not dropout_on

    def prepare_filters(self, length: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """What :meth:`forward` needs of the long filters at ``length``, computed once.

        ``(padded filters, spectra)``: the padded filters (``None`` on the autograd-free path,
        which needs only the spectra) and their spectra, which depend on the parameters and
        ``L`` only. An encoder that runs a batch in chunks of cells computes them once and
        passes them to each chunk's forward (``filters=``): in training the filter MLP's graph
        and one spectrum per filter are then shared by the chunks.
        """
        n_fft = fast_fft_size(2 * length - 1)
        if self._runs_inplace():
            return None, self.filter_spectra(length, n_fft)
        padded = self.padded_filters(length, n_fft)
        with torch.no_grad(), torch.autocast(device_type=padded.device.type, enabled=False):
            spectra = rfft(padded, n=n_fft)
        return padded, spectra

    def _gated_convolutions_inplace(
        self, z: torch.Tensor, gates: list[torch.Tensor], spectra: torch.Tensor, n_fft: int
    ) -> torch.Tensor:
        """Autograd-free gated convolutions, every product written in place into one buffer.

        The buffer is ``n_fft`` long with zeros after ``L``: each gated product goes into its
        first ``L`` entries, so the next transform reads it as it is, without a padded copy.
        """
        length = z.shape[-1]
        buffer = z.new_zeros(z.shape[:-1] + (n_fft,), dtype=fft_dtype(spectra.dtype))
        signal = buffer[..., :length]
        signal.copy_(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            for n, gate in enumerate(gates):
                spectrum = rfft(buffer, n=n_fft)
                spectrum.mul_(spectra[n])
                torch.mul(gate, irfft(spectrum, n=n_fft)[..., length - 1 : 2 * length - 1], out=signal)
        return signal

    def forward(self, u: torch.Tensor, filters: tuple | None = None) -> torch.Tensor:
        """``u``: ``(batch, L, d_model)`` -> ``(batch, L, d_model)``.

        ``filters``: :meth:`prepare_filters` of this ``L``, when the caller computed them once
        for several forwards (computed here when omitted).
        """
        length = u.shape[1]
        n_fft = fast_fft_size(2 * length - 1)
        if filters is None:
            filters = self.prepare_filters(length)
        streams = self._project_in(u)  # (B, (N+1)d, L)
        streams = short_convolution(streams, self.short_conv.weight, self.short_conv.bias)
        *gates, z = streams.split(self.d_model, dim=1)
        padded, spectra = filters
        if self._runs_inplace():
            z = self._gated_convolutions_inplace(z, gates, spectra, n_fft)
        else:
            for n, gate in enumerate(gates):
                z = self.dropout(gate * long_convolution(z, padded[n], n_fft, spectra[n]))
        return self._project_out(z)


class HyenaBlock(nn.Module):
    """Pre-norm residual block: ``u + mixer(LN(u))`` then ``u + MLP(LN(u))``.

    Parameters
    ----------
    d_model
        Channel width.
    mlp_ratio
        Hidden width of the MLP as a multiple of ``d_model``.
    dropout
        Dropout in the mixer and after the MLP.
    mixer
        ``"hyena"`` (default): :class:`BidirectionalHyenaOperator`; ``"attention"``: exact
        multi-head softmax attention over all tokens
        (:class:`~schyena_tools.nn.BidirectionalAttentionMixer`), the quadratic
        baseline that the speed benchmark compares against. Everything else is identical.
    attention_heads
        Number of heads of the attention mixer (ignored for Hyena).
    operator_kwargs
        Passed to :class:`BidirectionalHyenaOperator` (order, filter options).

    """

    def __init__(
        self,
        d_model: int,
        mlp_ratio: int = 2,
        dropout: float = 0.0,
        mixer: str = "hyena",
        attention_heads: int = 4,
        **operator_kwargs,
    ):
        super().__init__()
        self.norm_mixer = nn.LayerNorm(d_model)
        if mixer == "hyena":
            self.mixer = BidirectionalHyenaOperator(d_model, dropout=dropout, **operator_kwargs)
        elif mixer == "attention":
            from ._attention import BidirectionalAttentionMixer

            self.mixer = BidirectionalAttentionMixer(d_model, n_heads=attention_heads, dropout=dropout)
        else:
            raise ValueError(f"mixer must be 'hyena' or 'attention', got {mixer!r}")
        self.mixer_type = mixer
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def prepare(self, length: int) -> tuple | None:
        """The mixer's per-length precomputation (Hyena's long filters; None for attention)."""
        return self.mixer.prepare_filters(length) if self.mixer_type == "hyena" else None

    def forward(self, u: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
        """``u``: ``(batch, L, d_model)``; ``prepared``: :meth:`prepare` of this ``L``, if computed."""
        mix = self.mixer if prepared is None else lambda x: self.mixer(x, filters=prepared)
        if torch.is_grad_enabled() or _is_compiling():
            u = u + mix(self.norm_mixer(u))
            return u + self.mlp(self.norm_mlp(u))
        # inference: residual adds in place into the fresh branch outputs (same result, fewer
        # allocations) unless autocast gave the branch a narrower dtype than the residual stream
        u = _residual_add(u, mix(self.norm_mixer(u)))
        return _residual_add(u, self.mlp(self.norm_mlp(u)))


def _residual_add(residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    if branch.dtype == residual.dtype and branch.shape == residual.shape:
        return branch.add_(residual)
    return residual + branch
