"""Speed options of the network: attention baseline mixer, torch.compile, autocast, caches."""

import copy
import shutil
import time
import warnings

import pytest
import torch

from schyena_tools.nn import (
    BidirectionalAttentionMixer,
    BidirectionalHyenaOperator,
    compile_encoder,
    depthwise_short_conv,
    direct_conv_reference,
    long_convolution,
    pad_filters,
)

from ._helpers import tiny_encoder

# ---- attention baseline -------------------------------------------------------------------------


def test_attention_encoder_runs_and_is_bidirectional():
    model = tiny_encoder(120, mixer="attention", attention_heads=4).eval()
    assert all(isinstance(b.mixer, BidirectionalAttentionMixer) for b in model.blocks)
    x = torch.rand(2, 120)
    out = model(x)
    assert out.hidden.shape == (2, 120, 16) and torch.isfinite(out.hidden).all()
    for changed, read in ((-1, 0), (0, -1)):
        y = x.clone()
        y[:, changed] += 3.0
        assert (model(y).hidden[:, read] - out.hidden[:, read]).abs().max() > 1e-6


def test_attention_encoder_is_identical_apart_from_the_mixer():
    hyena = tiny_encoder(40)
    attention = tiny_encoder(40, mixer="attention")
    shared = {k for k in hyena.state_dict() if ".mixer." not in k}
    assert shared == {k for k in attention.state_dict() if ".mixer." not in k}
    loss = attention(torch.rand(3, 40)).predicted_expression.pow(2).mean()
    loss.backward()
    assert all(
        p.grad is not None
        for p in attention.parameters()
        if p is not attention.mask_token and p is not attention.missing_token
    )


def test_attention_mixer_matches_multihead_attention_math():
    torch.manual_seed(1)
    mixer = BidirectionalAttentionMixer(8, n_heads=2)
    u = torch.randn(2, 11, 8)
    q, k, v = mixer.qkv(u).chunk(3, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    outs = []
    for h in heads:
        w = torch.softmax(q[..., h] @ k[..., h].transpose(1, 2) / 2.0, dim=-1)
        outs.append(w @ v[..., h])
    expected = mixer.out_proj(torch.cat(outs, dim=-1))
    torch.testing.assert_close(mixer(u), expected, rtol=1e-5, atol=1e-5)


def test_unknown_mixer_is_a_clear_error():
    with pytest.raises(ValueError, match="mixer"):
        tiny_encoder(10, mixer="mamba")


# ---- the optimised Hyena pieces -----------------------------------------------------------------


def test_depthwise_short_conv_equals_conv1d():
    torch.manual_seed(0)
    for kernel in (1, 3, 5):
        conv = torch.nn.Conv1d(6, 6, kernel, padding=kernel // 2, groups=6)
        x = torch.randn(2, 6, 17)
        torch.testing.assert_close(depthwise_short_conv(x, conv.weight, conv.bias), conv(x))


def test_long_convolution_gradients_are_exact():
    length, n_fft = 9, 20
    u = torch.randn(2, 3, length, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 2 * length - 1, dtype=torch.float64, requires_grad=True)
    gain = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, h, g: long_convolution(u, pad_filters(h, n_fft, g), n_fft), (u, h, gain)
    )
    # and the value is the direct non-causal convolution plus the gain times the input
    expected = direct_conv_reference(u, h) + gain[:, None] * u
    torch.testing.assert_close(long_convolution(u, pad_filters(h, n_fft, gain), n_fft), expected)


def test_inference_path_equals_autograd_path():
    torch.manual_seed(0)
    op = BidirectionalHyenaOperator(8, order=3, hidden_dim=16)
    u = torch.randn(2, 70, 8)
    with torch.no_grad():
        fast = op(u)
    slow = op(u)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-6)


def test_filter_cache_is_invalidated_by_parameter_updates():
    torch.manual_seed(0)
    op = BidirectionalHyenaOperator(8, hidden_dim=16)
    u = torch.randn(1, 40, 8)
    with torch.no_grad():
        first = op(u)
        assert op._spectrum_cache is not None
        torch.testing.assert_close(op(u), first)  # served from the cache
        op.filter_bias.add_(1.0)  # in-place update bumps the version counter
        changed = op(u)
        op.long_filter.mlp[0].weight.mul_(2.0)
        changed_again = op(u)
    assert (changed - first).abs().max() > 1e-4
    assert (changed_again - changed).abs().max() > 1e-4
    fresh = copy.deepcopy(op)
    assert fresh._spectrum_cache is None
    with torch.no_grad():
        torch.testing.assert_close(fresh(u), changed_again)
    # another length recomputes
    with torch.no_grad():
        assert op(torch.randn(1, 41, 8)).shape == (1, 41, 8)


def test_load_state_dict_invalidates_filter_cache():
    a, b = tiny_encoder(30).eval(), tiny_encoder(30, filter_hidden_dim=16).eval()
    torch.manual_seed(5)
    for p in b.parameters():
        p.data.normal_()
    x = torch.rand(2, 30)
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x).hidden, b(x).hidden)


# ---- autocast -----------------------------------------------------------------------------------


def _relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("mixer", ["hyena", "attention"])
def test_cpu_bf16_autocast_is_finite_and_close(mixer):
    model = tiny_encoder(300, mixer=mixer).eval()
    x = torch.rand(2, 300)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low.hidden).all()
    assert _relative_error(low.hidden, ref.hidden) < 5e-2
    assert _relative_error(low.cell_embedding, ref.cell_embedding) < 5e-2


def test_cpu_bf16_autocast_training_step():
    model = tiny_encoder(200)
    x = torch.rand(3, 200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, masked=x > 0.7)
        # the projections run in bf16, the long convolutions in float32
        streams = model.blocks[0].mixer._project_in(torch.randn(1, 200, 16))
        assert streams.dtype == torch.bfloat16
    loss = out.predicted_expression.float().pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_matches_fp32(dtype):
    model = tiny_encoder(2000, d_model=32).cuda().eval()
    x = torch.rand(4, 2000, device="cuda")
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=dtype):
            low = model(x)
    assert torch.isfinite(low.hidden).all()
    assert _relative_error(low.hidden, ref.hidden) < 5e-2
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        loss = model(x).predicted_expression.float().pow(2).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = tiny_encoder(500).eval()
    x = torch.rand(2, 500)
    with torch.no_grad():
        cpu = model(x).hidden
        gpu = model.cuda()(x.cuda()).hidden.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


# ---- torch.compile ------------------------------------------------------------------------------


def test_compile_blocks_matches_eager_or_falls_back_with_warning():
    model = tiny_encoder(64, d_model=8, n_layers=1, filter_hidden_dim=8)
    x = torch.rand(2, 64)
    with torch.no_grad():
        eager = model(x).hidden
    state_keys = set(model.state_dict())
    compiled = compile_encoder(model)
    assert compiled is model and set(model.state_dict()) == state_keys
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(x)
    elapsed = time.perf_counter() - started
    fell_back = any("torch.compile failed" in str(w.message) for w in caught)
    if shutil.which("gcc") or shutil.which("cc"):
        assert not fell_back, [str(w.message) for w in caught]
        assert model.is_compiled
    torch.testing.assert_close(out.hidden.detach(), eager, rtol=1e-4, atol=1e-5)
    # training through the compiled blocks gives gradients
    out.predicted_expression.pow(2).mean().backward()
    assert model.blocks[0].mixer.long_filter.mlp[0].weight.grad is not None
    print(f"first compiled forward (compilation included): {elapsed:.1f} s")
    # a deep copy starts uncompiled and still works
    assert not copy.deepcopy(model).is_compiled
    model.compile_blocks(False)
    assert not model.is_compiled


def test_compile_failure_falls_back_with_warning():
    model = tiny_encoder(20, d_model=8, n_layers=1, filter_hidden_dim=8)
    x = torch.rand(1, 20)
    with torch.no_grad():
        eager = model(x).hidden

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("this backend cannot compile anything")

    model.compile_blocks(backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = model(x).hidden
    assert not model.is_compiled
    torch.testing.assert_close(out.detach(), eager)


# ---- cells in cache-sized chunks, the short convolution's own backward --------------------------


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_chunked_encoder_equals_the_whole_batch(training, checkpointing):
    torch.manual_seed(0)
    whole = tiny_encoder(50, cells_per_chunk=100, gradient_checkpointing=checkpointing).train(training)
    chunked = tiny_encoder(50, cells_per_chunk=2, gradient_checkpointing=checkpointing).train(training)
    chunked.load_state_dict(whole.state_dict())
    x = torch.rand(5, 50)
    masked = torch.rand(5, 50) < 0.2
    for missing in (torch.arange(50) % 7 == 0, torch.rand(5, 50) < 0.1):
        outputs = [model(x, masked=masked, missing=missing) for model in (whole, chunked)]
        for field in ("hidden", "predicted_expression", "cell_embedding"):
            torch.testing.assert_close(getattr(outputs[1], field), getattr(outputs[0], field))
        if training:
            for out in outputs:
                out.predicted_expression.pow(2).mean().backward()
            for (name, a), b in zip(whole.named_parameters(), chunked.parameters(), strict=True):
                assert (a.grad is None) == (b.grad is None), name
                if a.grad is not None:
                    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
            whole.zero_grad(), chunked.zero_grad()


def test_cpu_chunk_rule_keeps_one_operator_in_cache_and_gpus_run_whole_batches():
    from schyena_tools.nn import SCHyenaEncoder, cpu_cells_per_chunk

    # the default model at full length: one cell per chunk to embed, two to train
    assert cpu_cells_per_chunk(19972, 64, 2, training=False) == 1
    assert cpu_cells_per_chunk(19972, 64, 2, training=True) == 2
    assert cpu_cells_per_chunk(19972, 256, 2, training=True) == 1
    assert cpu_cells_per_chunk(2000, 32, 2, training=False) == 21
    model = SCHyenaEncoder(19972, d_model=8, n_layers=1)
    expected = cpu_cells_per_chunk(19972, 8, 2, torch.is_grad_enabled())
    assert model.chunk_size(16, torch.device("cpu")) == expected
    assert model.chunk_size(16, torch.device("cuda")) == 16
    assert SCHyenaEncoder(100, d_model=8, cells_per_chunk=3).chunk_size(16, torch.device("cuda")) == 3
    with pytest.raises(ValueError, match="cells_per_chunk"):
        SCHyenaEncoder(100, cells_per_chunk=0)


@pytest.mark.parametrize("kernel,length", [(1, 6), (3, 9), (5, 11), (5, 2)])
def test_short_convolution_backward_is_exact(kernel, length):
    from schyena_tools.nn import short_convolution

    torch.manual_seed(0)
    x = torch.randn(2, 4, length, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 1, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(short_convolution, (x, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w: short_convolution(x, w, None), (x, weight))
    # the same gradients as autograd through the plain multiply-adds
    grad = torch.randn(2, 4, length, dtype=torch.float64)
    ours = torch.autograd.grad(short_convolution(x, weight, bias), (x, weight, bias), grad)
    plain = torch.autograd.grad(depthwise_short_conv(x, weight, bias), (x, weight, bias), grad)
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, b)


def test_short_convolution_under_bf16_autocast_gives_float32_parameter_gradients():
    op = BidirectionalHyenaOperator(8, hidden_dim=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(torch.randn(2, 30, 8))
    out.float().pow(2).mean().backward()
    assert op.short_conv.weight.grad.dtype == torch.float32
    assert op.short_conv.bias.grad.dtype == torch.float32
    assert torch.isfinite(op.short_conv.weight.grad).all()


def test_long_convolution_with_a_given_spectrum_is_the_same_and_differentiable():
    from schyena_tools.nn._fftconv import rfft

    length, n_fft = 9, 20
    u = torch.randn(2, 3, length, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 2 * length - 1, dtype=torch.float64, requires_grad=True)

    def with_spectrum(u, h):
        padded = pad_filters(h, n_fft)
        with torch.no_grad():
            spectrum = rfft(padded, n=n_fft)
        return long_convolution(u, padded, n_fft, spectrum)

    assert torch.autograd.gradcheck(with_spectrum, (u, h))
    torch.testing.assert_close(with_spectrum(u, h), long_convolution(u, pad_filters(h, n_fft), n_fft))


def _saved_bytes(model, x, masked):
    """Bytes of the distinct storages autograd saves for the backward of one forward."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, masked=masked)
    return sum(storages.values()), out


def test_chunks_save_no_more_for_the_backward_than_the_whole_batch():
    torch.manual_seed(0)
    whole = tiny_encoder(300, cells_per_chunk=8).train()
    chunked = tiny_encoder(300, cells_per_chunk=1).train()
    x = torch.rand(8, 300)
    masked = torch.rand(8, 300) < 0.15
    whole_bytes, _ = _saved_bytes(whole, x, masked)
    chunked_bytes, _ = _saved_bytes(chunked, x, masked)
    assert chunked_bytes <= 1.02 * whole_bytes, (chunked_bytes, whole_bytes)
