"""Tests of the cell-embedding expression head and its data-dependent start."""

import numpy as np
import scanpy as sc
import torch

import schyena_tools as st
from schyena_tools.nn import CellExpressionHead, CellStandardize

from ._helpers import TINY


def test_head_starts_at_the_gene_means():
    head = CellExpressionHead(d_model=8, n_genes=30)
    means = torch.rand(30) * 3
    head.initialize_gene_means(means)
    prediction = head(torch.randn(5, 8))
    torch.testing.assert_close(prediction, means.expand(5, 30))


def test_head_learns_what_differs_between_cells():
    # Two groups of cells whose embeddings differ by a small offset on top of a large shared
    # part (as pooled embeddings do) and whose expression differs: the head must pick it up.
    torch.manual_seed(0)
    group = torch.arange(64) % 2
    embedding = 5.0 + 0.05 * group[:, None].float() + 0.01 * torch.randn(64, 8)
    expression = torch.where(group[:, None] == 1, 2.0, 0.0) * (torch.arange(30) < 10)
    head = CellExpressionHead(d_model=8, n_genes=30)
    head.initialize_gene_means(expression.mean(0))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    start = ((head(embedding) - expression) ** 2).mean().item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = ((head(embedding) - expression) ** 2).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * start, (start, loss.item())


def test_standardize_handles_a_single_cell_in_training():
    layer = CellStandardize(4).train()
    layer(torch.randn(8, 4) * 3 + 2)  # updates the running statistics
    single = layer(torch.randn(1, 4))
    assert single.shape == (1, 4) and torch.isfinite(single).all()


def test_first_pretraining_starts_head_from_data_means(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    head = model.module.cell_expression_head
    assert torch.all(head.decoder.bias == 0)
    # lr=0: the weights stay where the data-dependent initialisation put them
    model.train(max_epochs=1, batch_size=35, enable_progress_bar=False, plan_kwargs={"lr": 0.0})
    reference = zeisel_small.copy()
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    expected = np.asarray(reference.X.mean(0)).ravel()
    np.testing.assert_allclose(head.decoder.bias.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    # a second call continues training and leaves the weights alone
    with torch.no_grad():
        head.decoder.bias.zero_()
    model.train(max_epochs=1, batch_size=35, enable_progress_bar=False, plan_kwargs={"lr": 0.0})
    assert torch.all(head.decoder.bias == 0)
