"""Depth augmentation of pre-training: thinned copies and the consistency term."""

import numpy as np
import pytest
import torch

import schyena_tools as st
from schyena_tools.module import SCHyenaModule, add_thinned_copies

from ._helpers import SMALL, TINY


def test_thinned_copies_are_shallower_reads_of_the_same_cells():
    torch.manual_seed(0)
    counts = torch.poisson(torch.full((6, 200), 3.0))
    library = counts.sum(1, keepdim=True) * 1.5  # the cells' files hold more genes
    both, both_library = add_thinned_copies(counts, library, min_keep=0.2)
    original, copy = both[:6], both[6:]
    assert torch.equal(original, counts)
    assert (copy <= counts).all() and (copy == copy.round()).all()
    kept = copy.sum(1) / counts.sum(1)
    assert (kept > 0.1).all() and (kept < 1.0).all()
    assert kept.std() > 0.01  # one keep probability per cell, not one per minibatch
    assert torch.allclose(both_library[:6], library)
    assert torch.allclose(both_library[6:], library * kept[:, None])
    assert add_thinned_copies(counts, None, 0.5)[1] is None


def _outputs(embedding, n_originals):
    values = torch.rand(embedding.shape[0], 5)
    return {
        "values": values,
        "masked": torch.ones_like(values, dtype=torch.bool),
        "missing": None,
        "predicted_expression": values,
        "cell_predicted_expression": torch.cat([values[:n_originals], values[:n_originals]]),
        "cell_embedding": embedding,
        "n_originals": n_originals,
    }


def test_consistency_term_is_zero_for_identical_copies_and_scale_free():
    torch.manual_seed(0)
    originals = torch.randn(4, 3)
    same = SCHyenaModule.masked_expression_loss(_outputs(torch.cat([originals, originals]), 4))
    assert same.extra_metrics["consistency"] == 0
    # the copies' cell head is scored against the originals' values: a perfect prediction costs 0
    assert same.extra_metrics["cell_mse"] == 0

    apart = torch.cat([originals, originals + torch.randn(4, 3)])
    loss = SCHyenaModule.masked_expression_loss(_outputs(apart, 4)).extra_metrics["consistency"]
    scaled = SCHyenaModule.masked_expression_loss(_outputs(apart * 100, 4)).extra_metrics["consistency"]
    assert loss > 0
    assert torch.isclose(loss, scaled)  # shrinking every embedding cannot lower it

    weighted = SCHyenaModule.masked_expression_loss(_outputs(apart, 4), consistency_weight=0.0)
    assert torch.isclose(weighted.loss, same.loss)


def test_module_adds_copies_to_training_minibatches_only(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    counts = torch.tensor(zeisel_small.X[:4].toarray(), dtype=torch.float32)
    out = model.module.inference(counts, mask_ratio=0.15, depth_augmentation=0.3)
    assert out["cell_embedding"].shape[0] == 8 and out["n_originals"] == 4
    assert "n_originals" not in model.module.inference(counts)


def test_pretraining_with_depth_augmentation(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    with pytest.raises(ValueError, match="depth_augmentation must be between 0 and 1"):
        model.train(depth_augmentation=1.5, **SMALL)
    with pytest.raises(ValueError, match="consistency_weight"):
        model.train(depth_augmentation=0.2, consistency_weight=-1.0, **SMALL)
    assert not model.is_trained_  # refused before any work
    model.train(depth_augmentation=0.2, **SMALL)
    assert "consistency_train" in model.history
    assert "consistency_validation" not in model.history  # validation sees the cells as they are
    embedding = model.get_latent_representation(progress_bar=False)
    assert embedding.shape == (zeisel_small.n_obs, TINY["d_model"]) and np.isfinite(embedding).all()
