"""The cell head's pre-training objective: squared error of the profile, or multinomial counts."""

import numpy as np
import pytest
import torch

import schyena_tools as st
from schyena_tools.module import SCHyenaModule, cell_head_start_values, log_normalize

from ._helpers import SMALL, TINY


def _outputs(counts, logits, missing=None):
    values = log_normalize(counts, 1e4)
    return {
        "values": values,
        "masked": torch.ones_like(values, dtype=torch.bool),
        "missing": missing,
        "predicted_expression": values,
        "cell_predicted_expression": logits,
        "cell_counts": counts,
        "cell_embedding": torch.zeros(counts.shape[0], 3),
    }


def test_multinomial_cell_term_is_a_divergence_from_the_observed_proportions():
    torch.manual_seed(0)
    counts = torch.poisson(torch.full((4, 50), 2.0))
    proportions = counts / counts.sum(1, keepdim=True)
    exact = SCHyenaModule.masked_expression_loss(
        _outputs(counts, torch.log(proportions + 1e-12) + 7.0), cell_objective="multinomial"
    )
    assert exact.extra_metrics["cell_kl"].abs() < 1e-4  # softmax ignores the per-cell offset
    assert "cell_mse" not in exact.extra_metrics
    flat = SCHyenaModule.masked_expression_loss(
        _outputs(counts, torch.zeros_like(counts)), cell_objective="multinomial"
    )
    assert flat.extra_metrics["cell_kl"] > 0.1

    # a shallower read of the same proportions costs the same: depth is not the head's business
    deeper = SCHyenaModule.masked_expression_loss(
        _outputs(counts * 10, torch.zeros_like(counts)), cell_objective="multinomial"
    )
    assert torch.isclose(deeper.extra_metrics["cell_kl"], flat.extra_metrics["cell_kl"])


def test_multinomial_cell_term_ignores_missing_genes():
    torch.manual_seed(1)
    counts = torch.poisson(torch.full((3, 20), 3.0))
    missing = torch.zeros(20, dtype=torch.bool)
    missing[:5] = True
    counts_measured = counts.masked_fill(missing, 0.0)
    logits = torch.randn(3, 20)
    other_logits = logits.clone()
    other_logits[:, :5] = 50.0  # what the head says about unmeasured genes does not count
    first = SCHyenaModule.masked_expression_loss(
        _outputs(counts_measured, logits, missing), cell_objective="multinomial"
    )
    second = SCHyenaModule.masked_expression_loss(
        _outputs(counts_measured, other_logits, missing), cell_objective="multinomial"
    )
    assert torch.isclose(first.loss, second.loss)


def test_unknown_cell_objective_is_refused():
    counts = torch.ones(2, 4)
    with pytest.raises(ValueError, match="cell_objective"):
        SCHyenaModule.masked_expression_loss(_outputs(counts, counts), cell_objective="poisson")
    with pytest.raises(ValueError, match="cell_objective"):
        cell_head_start_values(counts, "poisson", 1e4)


def test_pretraining_with_the_multinomial_cell_head(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(ValueError, match="cell_objective must be one of"):
        model.train(cell_objective="nb", **SMALL)
    assert not model.is_trained_  # refused before any work
    model.train(cell_objective="multinomial", **SMALL)
    assert "cell_kl_train" in model.history and "cell_mse_train" not in model.history
    # the head starts at the log of each gene's mean share of a cell's counts
    counts = zeisel_small.X.toarray()
    share = (counts / counts.sum(1, keepdims=True)).mean(0)
    bias = model.module.cell_expression_head.decoder.bias.detach().numpy()
    expressed = share > 1e-4
    assert np.corrcoef(bias[expressed], np.log(share[expressed]))[0, 1] > 0.9
    embedding = model.get_latent_representation(progress_bar=False)
    assert embedding.shape == (zeisel_small.n_obs, model.module.embedding_dim)
    assert np.isfinite(embedding).all()


def test_cell_weight_scales_the_cell_term_only():
    torch.manual_seed(2)
    counts = torch.poisson(torch.full((4, 30), 2.0))
    outputs = _outputs(counts, torch.zeros_like(counts))
    outputs["predicted_expression"] = outputs["values"] + 0.5  # a masked term that is not zero
    masked_only = SCHyenaModule.masked_expression_loss(outputs, cell_weight=0.0)
    once = SCHyenaModule.masked_expression_loss(outputs)
    thrice = SCHyenaModule.masked_expression_loss(outputs, cell_weight=3.0)
    assert torch.isclose(masked_only.loss, masked_only.extra_metrics["masked_mse"])
    cell = once.extra_metrics["cell_mse"]
    assert cell > 0
    assert torch.isclose(thrice.loss - masked_only.loss, 3 * cell)


def test_multinomial_cell_head_with_thinned_copies(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    model.train(cell_objective="multinomial", depth_augmentation=0.3, **SMALL)
    kl = model.history["cell_kl_train"].to_numpy(dtype=float)
    assert np.isfinite(kl).all() and (kl >= 0).all()
