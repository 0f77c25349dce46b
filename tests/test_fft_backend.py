"""The SciPy FFT back-end equals the previous torch.fft kernel and the direct convolution."""

import pytest
import torch

from schyena_tools import nn as stnn
from schyena_tools.nn import bidirectional_fft_conv, direct_conv_reference, use_fft_backend

from ._helpers import tiny_encoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scipy_convolution_equals_torch_and_the_direct_reference_forward_and_backward(dtype):
    torch.manual_seed(0)
    signal = torch.randn(3, 4, 37, dtype=dtype)
    filters = torch.randn(4, 2 * 37 - 1, dtype=dtype)
    results = {}
    for backend in ("scipy", "torch"):
        u = signal.clone().requires_grad_(True)
        h = filters.clone().requires_grad_(True)
        with use_fft_backend(backend):
            out = bidirectional_fft_conv(u, h)
            (out * torch.linspace(-1, 1, 37, dtype=dtype)).sum().backward()
        results[backend] = (out.detach(), u.grad, h.grad)
    u = signal.clone().requires_grad_(True)
    h = filters.clone().requires_grad_(True)
    reference = direct_conv_reference(u, h)
    (reference * torch.linspace(-1, 1, 37, dtype=dtype)).sum().backward()
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    direct_results = (reference.detach(), u.grad, h.grad)
    for got, torch_path, direct in zip(results["scipy"], results["torch"], direct_results, strict=True):
        torch.testing.assert_close(got, torch_path, **tolerance)
        torch.testing.assert_close(got, direct, **tolerance)


def test_encoder_gives_the_same_embedding_and_gradients_on_both_backends():
    encoder = tiny_encoder(n_genes=300)
    values = torch.rand(4, 300) * (torch.rand(4, 300) > 0.6)
    outputs = {}
    for backend in ("scipy", "torch"):
        encoder.zero_grad()
        with use_fft_backend(backend):
            with torch.inference_mode():
                embedded = encoder(values).cell_embedding.clone()
            encoder.train()
            loss = encoder(values).predicted_expression.square().mean()
            loss.backward()
        grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
        outputs[backend] = (embedded, grads)
    torch.testing.assert_close(outputs["scipy"][0], outputs["torch"][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outputs["scipy"][1], outputs["torch"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_torch_is_the_cpu_default_and_the_choice_is_checked():
    assert stnn.fft_backend() == "torch"
    with use_fft_backend("scipy"):
        assert stnn.fft_backend() == "scipy"
    assert stnn.fft_backend() == "torch"
    with pytest.raises(ValueError, match="'scipy' or 'torch'"):
        with use_fft_backend("numpy"):
            pass


def test_tensors_that_autograd_tracks_stay_on_torch_fft():
    # fftconv called directly under autograd must stay differentiable (SciPy would cut the graph)
    signal = torch.randn(2, 3, 16, requires_grad=True)
    from schyena_tools.nn._fftconv import rfft

    with use_fft_backend("scipy"):
        spectrum = rfft(signal, n=32)
    assert spectrum.requires_grad
    spectrum.abs().sum().backward()
    assert signal.grad is not None
