"""Tests of the plain-PyTorch network on random tensors."""

import pytest
import torch

from schyena_tools.nn import (
    BidirectionalHyenaOperator,
    SCHyenaEncoder,
    bidirectional_fft_conv,
    direct_conv_reference,
    fast_fft_size,
)

from ._helpers import tiny_encoder


@pytest.mark.parametrize("length", [1, 2, 7, 64, 257, 1000])
def test_fft_conv_equals_direct_convolution(length):
    gen = torch.Generator().manual_seed(length)
    signal = torch.randn(3, 5, length, generator=gen)
    filters = torch.randn(5, 2 * length - 1, generator=gen)
    fast = bidirectional_fft_conv(signal, filters)
    direct = direct_conv_reference(signal.double(), filters.double())
    rel = (fast.double() - direct).norm() / direct.norm()
    assert rel < 1e-5, rel


def test_fft_conv_float64_is_exact():
    signal = torch.randn(2, 3, 100, dtype=torch.float64)
    filters = torch.randn(3, 199, dtype=torch.float64)
    torch.testing.assert_close(
        bidirectional_fft_conv(signal, filters), direct_conv_reference(signal, filters)
    )


def test_fft_conv_rejects_wrong_filter_length():
    with pytest.raises(ValueError, match="2L - 1"):
        bidirectional_fft_conv(torch.randn(1, 2, 10), torch.randn(2, 10))


@pytest.mark.parametrize("minimum", [1, 2, 7, 97, 1999, 39943, 65537])
def test_fast_fft_size_is_smooth_and_minimal(minimum):
    size = fast_fft_size(minimum)
    assert size >= minimum
    rest = size
    for p in (2, 3, 5):
        while rest % p == 0:
            rest //= p
    assert rest == 1
    # minimal: no 5-smooth number in between
    for candidate in range(minimum, size):
        r = candidate
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r != 1


def test_full_length_fft_size():
    assert fast_fft_size(2 * 19972 - 1) == 40000


def test_operator_is_bidirectional():
    torch.manual_seed(0)
    op = BidirectionalHyenaOperator(8, order=2, hidden_dim=16)
    u = torch.randn(1, 300, 8)
    base = op(u)
    last_changed = u.clone()
    last_changed[0, -1] += 1.0
    first_changed = u.clone()
    first_changed[0, 0] += 1.0
    assert (op(last_changed)[0, 0] - base[0, 0]).abs().max() > 1e-7
    assert (op(first_changed)[0, -1] - base[0, -1]).abs().max() > 1e-7


def test_encoder_last_gene_reaches_first_gene_and_back():
    model = tiny_encoder(200).eval()
    x = torch.rand(2, 200)
    base = model(x).hidden
    y = x.clone()
    y[:, -1] += 3.0
    assert (model(y).hidden[:, 0] - base[:, 0]).abs().max() > 1e-6
    y = x.clone()
    y[:, 0] += 3.0
    assert (model(y).hidden[:, -1] - base[:, -1]).abs().max() > 1e-6


def test_encoder_shapes():
    model = tiny_encoder(50)
    out = model(torch.rand(4, 50))
    assert out.hidden.shape == (4, 50, 16)
    assert out.predicted_expression.shape == (4, 50)
    assert out.cell_embedding.shape == (4, 16)


def test_missing_genes_do_not_leak_into_embedding():
    model = tiny_encoder(60).eval()
    missing = torch.zeros(60, dtype=torch.bool)
    missing[10:25] = True
    x = torch.rand(3, 60)
    garbage = x.clone()
    garbage[:, missing] = torch.randn(3, int(missing.sum())) * 100
    a = model(x, missing=missing)
    b = model(garbage, missing=missing)
    torch.testing.assert_close(a.cell_embedding, b.cell_embedding)
    torch.testing.assert_close(a.predicted_expression[:, ~missing], b.predicted_expression[:, ~missing])


def test_pool_ignores_missing_and_masked_states():
    hidden = torch.randn(2, 5, 3)
    expression = torch.tensor([[1.0, 2.0, 0.0, 4.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    missing = torch.tensor([False, True, False, True, False])
    masked = torch.zeros(2, 5, dtype=torch.bool)
    masked[0, 4] = True
    weights = SCHyenaEncoder.pooling_weights(expression, masked, missing)
    # cell 0: only gene 0 is measured, visible and expressed
    torch.testing.assert_close(weights[0], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
    # cell 1 has no visible expression: plain mean over measured genes
    torch.testing.assert_close(weights[1], (~missing).float())
    pooled = SCHyenaEncoder.pool(hidden, weights)
    torch.testing.assert_close(pooled[0], hidden[0, 0])
    torch.testing.assert_close(pooled[1], hidden[1, ~missing].mean(0))
    torch.testing.assert_close(SCHyenaEncoder.pool(hidden), hidden.mean(1))


def test_masked_values_do_not_leak_into_embedding():
    model = tiny_encoder(40).eval()
    masked = torch.zeros(2, 40, dtype=torch.bool)
    masked[:, 1::4] = True
    x = torch.rand(2, 40)
    y = x.clone()
    y[masked] = 9.0
    torch.testing.assert_close(model(x, masked=masked).cell_embedding, model(y, masked=masked).cell_embedding)


def test_masked_values_are_not_read():
    model = tiny_encoder(40).eval()
    masked = torch.zeros(2, 40, dtype=torch.bool)
    masked[:, ::3] = True
    x = torch.rand(2, 40)
    y = x.clone()
    y[masked] = 50.0
    torch.testing.assert_close(model(x, masked=masked).hidden, model(y, masked=masked).hidden)


def test_gradients_reach_every_parameter():
    model = tiny_encoder(30)
    masked = torch.zeros(3, 30, dtype=torch.bool)
    masked[:, :5] = True
    missing = torch.zeros(30, dtype=torch.bool)
    missing[-3:] = True
    out = model(torch.rand(3, 30), masked=masked, missing=missing)
    loss = out.predicted_expression.pow(2).mean() + out.cell_embedding.pow(2).mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_batch_order_does_not_change_per_cell_outputs():
    model = tiny_encoder(64).eval()
    x = torch.rand(6, 64)
    perm = torch.randperm(6)
    a = model(x)
    b = model(x[perm])
    torch.testing.assert_close(a.cell_embedding[perm], b.cell_embedding, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.predicted_expression[perm], b.predicted_expression, rtol=1e-5, atol=1e-6)
    # a cell alone gives what it gives in a batch
    torch.testing.assert_close(model(x[2:3]).cell_embedding[0], a.cell_embedding[2], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_same_gradients():
    x = torch.rand(2, 40)
    grads = []
    for ckpt in (False, True):
        model = tiny_encoder(40, gradient_checkpointing=ckpt)
        model(x, masked=x > 0.5, missing=torch.arange(40) < 3).predicted_expression.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(cells, 50\)"):
        tiny_encoder(50)(torch.rand(2, 49))


def test_principal_axes_start_puts_co_varying_genes_together():
    torch.manual_seed(0)
    group = (torch.arange(40) % 2).float()[:, None]
    expression = torch.zeros(40, 30)
    expression[:, :10] = 3.0 * group + 0.1 * torch.rand(40, 10)  # on in group 1
    expression[:, 10:20] = 3.0 * (1 - group) + 0.1 * torch.rand(40, 10)  # on in group 0
    expression[:, 20:] = 1.0  # constant: no variation, no loading
    model = tiny_encoder(30)
    before = model.gene_embedding.weight.detach().clone()
    model.add_principal_axes(expression)
    added = model.gene_embedding.weight.detach() - before
    assert added[20:].norm(dim=1).max() < 1e-3
    a, b = added[:10], added[10:20]
    within = torch.cdist(a, a).mean()
    between = torch.cdist(a, b).mean()
    assert between > 10 * within
