"""FFT kernels of the bidirectional Hyena operator: non-causal long convolutions over the gene axis.

Plain PyTorch, no modules: the operator in :mod:`schyena_tools.nn._hyena` builds on these.
Shapes are ``(batch, channels, L)``. Genes have no causal order, so every long filter is defined
on signed offsets ``-(L-1) .. (L-1)`` (``2L - 1`` taps, offset ``-(L-1)`` first) and the
convolution is non-causal. Zero padding to an FFT size of at least ``2L - 1`` means no output
position ever receives a contribution that wrapped around the end of the sequence.

Read top to bottom: the FFT back-end, the FFT size, the dtype rule, the filter layout, the one
convolution step (:func:`fftconv`), its autograd function, the public convolution, and the
O(L^2) reference.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

#: Which library computes the real FFTs of CPU tensors: ``"torch"`` (``torch.fft``, the default)
#: or ``"scipy"`` (pocketfft with ``workers``). On this project's 2-core CPU, SciPy ran one
#: 40,000-point long convolution about 1.5x faster than ``torch.fft``, but the whole encoder at
#: 19,972 genes only 1.06x (embedding) and 0.96x (training) as fast, measured alternately in one
#: process: the FFTs are not where the time goes, so the default stays ``torch.fft``. GPU tensors
#: always use ``torch.fft`` (cuFFT). Change it with :func:`use_fft_backend`.
_FFT_BACKEND = {"cpu": "torch"}


def fft_backend() -> str:
    """The back-end of CPU transforms: ``"torch"`` (the default) or ``"scipy"``."""
    return _FFT_BACKEND["cpu"]


@contextlib.contextmanager
def use_fft_backend(name: str):
    """Compute CPU transforms with ``name`` (``"scipy"`` or ``"torch"``) inside the block.

    Both give the same results to float32 rounding (tested against each other and the direct
    convolution, forward and backward). ``"scipy"`` is a measured option for CPUs where
    pocketfft is much faster than PyTorch's FFT (see ``benchmarks/speed.py``'s before/after).
    """
    if name not in ("scipy", "torch"):
        raise ValueError(f"FFT back-end must be 'scipy' or 'torch', got {name!r}")
    previous = _FFT_BACKEND["cpu"]
    _FFT_BACKEND["cpu"] = name
    try:
        yield
    finally:
        _FFT_BACKEND["cpu"] = previous


def _on_scipy(tensor: torch.Tensor) -> bool:
    """Whether this transform goes to SciPy: a CPU tensor that autograd does not track."""
    return (
        _FFT_BACKEND["cpu"] == "scipy"
        and tensor.device.type == "cpu"
        and not (torch.is_grad_enabled() and tensor.requires_grad)
        and not _is_compiling()
    )


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def rfft(signal: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.fft.rfft(signal, n=n)`` over the last axis, by SciPy where chosen (see above)."""
    if not _on_scipy(signal):
        return torch.fft.rfft(signal, n=n)
    import scipy.fft

    values = signal.detach().numpy()
    return torch.from_numpy(scipy.fft.rfft(values, n=n, axis=-1, workers=torch.get_num_threads()))


def irfft(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.fft.irfft(spectrum, n=n)`` over the last axis, by SciPy where chosen (see above)."""
    if not _on_scipy(spectrum):
        return torch.fft.irfft(spectrum, n=n)
    import scipy.fft

    values = spectrum.detach().numpy()
    return torch.from_numpy(scipy.fft.irfft(values, n=n, axis=-1, workers=torch.get_num_threads()))


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


def fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """Real dtype a transform runs in: float64 for float64 (or complex128) data, else float32.

    Half-precision FFTs of length 40k lose too many digits, so bf16/fp16 inputs (autocast) are
    transformed in float32.
    """
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def pad_filters(
    filters: torch.Tensor, n_fft: int | None = None, identity_gain: torch.Tensor | None = None
) -> torch.Tensor:
    """Offset-indexed filters zero-padded to ``n_fft`` taps in the FFT dtype.

    Parameters
    ----------
    filters
        ``(..., channels, 2L - 1)`` filter ``h`` indexed by offset: ``filters[..., L - 1 + t] = h[t]``.
    n_fft
        FFT size, at least ``2L - 1``; :func:`fast_fft_size` of ``2L - 1`` when omitted.
    identity_gain
        Optional ``(..., channels)`` values added to the offset-0 tap. ``h conv u + b * u`` then
        costs one long convolution and no extra pass over the batch: this is how the Hyena
        operator folds its per-channel bias term into the filter.

    Returns
    -------
    ``(..., channels, n_fft)`` float32 (float64 for float64 filters): the filter laid out linearly,
    offset ``-(L-1)`` at index 0, zeros after index ``2L - 2``.

    """
    length = (filters.shape[-1] + 1) // 2
    if n_fft is None:
        n_fft = fast_fft_size(2 * length - 1)
    if n_fft < filters.shape[-1]:
        raise ValueError(f"n_fft = {n_fft} is shorter than the filter ({filters.shape[-1]} taps)")
    # One zero-filled buffer and one copy; the copy also makes a transposed filter contiguous.
    padded = filters.new_zeros(filters.shape[:-1] + (n_fft,), dtype=fft_dtype(filters.dtype))
    padded[..., : filters.shape[-1]] = filters
    if identity_gain is not None:
        padded[..., length - 1] += identity_gain.to(padded.dtype)
    return padded


def fftconv(signal: torch.Tensor, kernel_f: torch.Tensor, n_fft: int) -> torch.Tensor:
    """One non-causal long convolution by FFT: ``irfft(rfft(u, n_fft) * H)[L-1 : 2L-1]``.

    Parameters
    ----------
    signal
        ``(..., channels, L)`` input ``u``.
    kernel_f
        ``(channels, n_fft // 2 + 1)`` spectrum of a :func:`pad_filters` filter.
    n_fft
        FFT size, at least ``2L - 1``.

    Returns
    -------
    ``(..., channels, L)`` in the real dtype of ``kernel_f`` (call sites cast back). The filter
    is laid out linearly, so output ``i`` of the non-causal convolution is entry ``i + L - 1``
    of the circular one. Runs with autocast disabled.

    """
    length = signal.shape[-1]
    with torch.autocast(device_type=signal.device.type, enabled=False):
        spectrum = rfft(signal.to(fft_dtype(kernel_f.dtype)), n=n_fft)
        spectrum.mul_(kernel_f)
        return irfft(spectrum, n=n_fft)[..., length - 1 : 2 * length - 1]


class _LongConvolution(torch.autograd.Function):
    """:func:`fftconv` with a lean hand-written backward.

    Autograd through ``torch.fft`` would save the batch-sized complex spectrum of ``u`` (4x the
    memory of ``u`` in float32) and differentiate ``rfft`` with a full complex-to-complex
    transform. Here only ``u`` (in its own dtype) and the filter spectrum are saved; the backward
    recomputes ``rfft(u)`` and uses real transforms only:
    ``grad_u = irfft(G conj(H))[:L]`` and ``grad_h = irfft(sum_batch G conj(U))`` with
    ``G = rfft(grad placed at L-1 .. 2L-2)``.
    """

    @staticmethod
    def forward(
        ctx, signal: torch.Tensor, padded_filter: torch.Tensor, n_fft: int, spectrum: torch.Tensor | None
    ) -> torch.Tensor:
        if spectrum is None:
            with torch.autocast(device_type=signal.device.type, enabled=False):
                kernel_f = rfft(padded_filter.detach(), n=n_fft)
        else:
            kernel_f = spectrum.detach()
        out = fftconv(signal, kernel_f, n_fft)
        ctx.save_for_backward(signal, kernel_f)
        ctx.n_fft = n_fft
        return out.to(signal.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        signal, kernel_f = ctx.saved_tensors
        n_fft = ctx.n_fft
        length = signal.shape[-1]
        dtype = fft_dtype(kernel_f.dtype)
        grad_signal = grad_filter = None
        with torch.autocast(device_type=signal.device.type, enabled=False):
            placed = grad_out.new_zeros(grad_out.shape[:-1] + (n_fft,), dtype=dtype)
            placed[..., length - 1 : 2 * length - 1] = grad_out
            grad_f = rfft(placed, n=n_fft)
            del placed
            if ctx.needs_input_grad[1]:
                signal_f = rfft(signal.to(dtype), n=n_fft)
                cross = signal_f.conj_physical_().mul_(grad_f)
                cross = cross.sum(dim=tuple(range(cross.dim() - kernel_f.dim())))
                grad_filter = irfft(cross, n=n_fft)
                del signal_f
            if ctx.needs_input_grad[0]:
                grad_f.mul_(kernel_f.conj())
                grad_signal = irfft(grad_f, n=n_fft)[..., :length].to(signal.dtype)
        return grad_signal, grad_filter, None, None


def long_convolution(
    signal: torch.Tensor, padded_filter: torch.Tensor, n_fft: int, spectrum: torch.Tensor | None = None
) -> torch.Tensor:
    """Non-causal long convolution of ``(batch, channels, L)`` with a :func:`pad_filters` filter.

    Differentiable in ``signal`` and ``padded_filter`` (a custom autograd function that saves
    ``signal`` and the filter spectrum only). ``spectrum``: ``rfft(padded_filter, n_fft)``, when
    the caller has it (it is then not recomputed, and every call that passes the same tensor
    saves that one tensor: an encoder running its cells in chunks keeps one spectrum per filter,
    not one per chunk); gradients still flow to ``padded_filter``. The transform runs in the
    dtype of ``padded_filter`` (float32 or float64) with autocast disabled; the result has the
    dtype of ``signal``.
    """
    if padded_filter.shape[-1] != n_fft:
        raise ValueError(f"padded_filter must have n_fft = {n_fft} taps, got {padded_filter.shape[-1]}")
    return _LongConvolution.apply(signal, padded_filter, n_fft, spectrum)


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
    for float64 inputs) whatever the autocast state (:func:`fft_dtype`). The FFT size is the
    smallest 5-smooth number ``>= 2L - 1`` (:func:`fast_fft_size`).

    """
    length = signal.shape[-1]
    if filters.shape[-1] != 2 * length - 1:
        raise ValueError(
            f"filters must have 2L - 1 = {2 * length - 1} taps for a signal of length {length}, "
            f"got {filters.shape[-1]}"
        )
    n_fft = fast_fft_size(2 * length - 1)
    if signal.dtype == torch.float64:
        filters = filters.to(torch.float64)
    return long_convolution(signal, pad_filters(filters, n_fft), n_fft)


def direct_conv_reference(signal: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """O(L^2) reference for :func:`bidirectional_fft_conv`; only for tests and small L."""
    length = signal.shape[-1]
    offsets = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # i - j
    toeplitz = filters[:, offsets + length - 1]  # (channels, L_out, L_in)
    return torch.einsum("cij,bcj->bci", toeplitz, signal)
