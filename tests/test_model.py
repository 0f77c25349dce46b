"""The SCHyena model class end to end on small real data."""

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch.callbacks import Callback

import schyena_tools as st
from schyena_tools.module import log_normalize, sample_expression_mask

from ._helpers import TINY


def test_log_normalize_matches_scanpy_recipe(zeisel_small):
    import scanpy as sc

    ref = zeisel_small.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    counts = torch.as_tensor(zeisel_small.X.toarray(), dtype=torch.float32)
    ours = log_normalize(counts, 1e4).numpy()
    np.testing.assert_allclose(ours, ref.X.toarray(), rtol=1e-5, atol=1e-5)


def test_mask_hits_nonzeros_more_than_zeros_and_never_missing():
    torch.manual_seed(0)
    values = (torch.rand(200, 500) < 0.3).float() * torch.rand(200, 500)
    missing = torch.zeros(500, dtype=torch.bool)
    missing[:50] = True
    masked = sample_expression_mask(values, 0.4, 0.04, missing)
    nonzero = (values > 0) & ~missing
    zero = (values == 0) & ~missing
    assert abs(masked[nonzero].float().mean().item() - 0.4) < 0.02
    assert abs(masked[zero].float().mean().item() - 0.04) < 0.01
    assert not masked[:, missing].any()


def test_train_records_losses_and_embeds(trained_small):
    model, adata = trained_small
    history = model.history
    assert "train_loss" in history and "validation_loss" in history
    # only what this objective measures: no VAE terms (ELBO, KL, reconstruction) from scvi-tools
    assert set(history) == {
        f"{metric}_{split}"
        for metric in ("masked_mse", "cell_mse", "masked_fraction")
        for split in ("train", "validation")
    } | {"train_loss", "validation_loss"}
    assert len(history["train_loss"]) == 2
    assert np.isfinite(history["train_loss"].to_numpy(dtype=float)).all()
    assert "pretrain" in model.phase_history_
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, TINY["d_model"]) and z.dtype == np.float32
    assert np.isfinite(z).all()
    assert z.std(0).min() > 0  # cells differ


def test_pretraining_lowers_masked_loss(zeisel_small):
    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    model.train(
        max_epochs=8, batch_size=16, train_size=1.0, enable_progress_bar=False, plan_kwargs={"lr": 3e-3}
    )
    loss = model.history["train_loss"]["train_loss"].to_numpy(dtype=float)
    assert loss[-1] < 0.8 * loss[0], loss


def test_embedding_independent_of_batch_size_and_indices(trained_small):
    model, adata = trained_small
    full = model.get_latent_representation(batch_size=7)
    np.testing.assert_allclose(model.get_latent_representation(batch_size=64), full, rtol=1e-4, atol=1e-5)
    idx = [5, 1, 30]
    np.testing.assert_allclose(model.get_latent_representation(indices=idx), full[idx], rtol=1e-4, atol=1e-5)


def test_dense_and_sparse_input_agree(trained_small):
    model, adata = trained_small
    dense = adata.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(
        model.get_latent_representation(dense), model.get_latent_representation(adata), rtol=1e-5, atol=1e-6
    )


def test_counts_from_layer(zeisel_small):
    adata = zeisel_small
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.shape, dtype=np.float32)  # .X holds something else
    st.SCHyena.setup_anndata(adata, layer="counts")
    model = st.SCHyena(adata, **TINY)
    a = model.get_latent_representation()
    other = adata.copy()
    other.X = other.layers["counts"].copy()
    st.SCHyena.setup_anndata(other)
    np.testing.assert_allclose(
        a, _same_weights(model, other).get_latent_representation(), rtol=1e-5, atol=1e-6
    )


def _same_weights(model, adata):
    twin = st.SCHyena(adata, **TINY)
    twin.module.load_state_dict(model.module.state_dict())
    return twin


def test_save_load_gives_identical_embeddings(trained_small, tmp_path):
    import logging

    model, adata = trained_small
    before = model.get_latent_representation()
    model.save(tmp_path / "model")
    # scvi-tools' "File .../model.pt already downloaded" on every local load: not shown
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logging.getLogger("scvi.data._download").addHandler(handler)
    try:
        loaded = st.SCHyena.load(tmp_path / "model", adata=adata)
    finally:
        logging.getLogger("scvi.data._download").removeHandler(handler)
    assert not [r for r in records if "already downloaded" in r.getMessage()]
    np.testing.assert_array_equal(loaded.get_latent_representation(), before)
    assert list(loaded.gene_vocabulary) == list(adata.var_names)
    assert "pretrain" in loaded.phase_history_


def test_full_length_forward_on_all_genes(zeisel_full_length):
    adata = zeisel_full_length
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    model = st.SCHyena(adata, **TINY)
    assert model.module.n_genes == 19972
    model.train(max_epochs=1, batch_size=8, train_size=1.0, enable_progress_bar=False)
    z = model.get_latent_representation(batch_size=8)
    assert z.shape == (adata.n_obs, TINY["d_model"]) and np.isfinite(z).all()


def test_view_anndata_setup(trained_small, capsys):
    model, _ = trained_small
    model.view_anndata_setup()
    assert "labels" in capsys.readouterr().out.lower()


class _RecordModes(Callback):
    """Records, at every training step, whether any submodule of the module is in eval mode."""

    def __init__(self):
        self.eval_modules_seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        module = pl_module.module
        self.eval_modules_seen.append(sum(not m.training for m in module.modules()))


def test_training_after_inference_runs_in_train_mode(zeisel_small):
    """Inference and a finished phase leave the module in eval mode; the next phase must not."""
    st.SCHyena.setup_anndata(zeisel_small, labels_key="cell_type")
    model = st.SCHyena(zeisel_small, **TINY)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.get_latent_representation()
    first = _RecordModes()
    model.train(max_epochs=1, enable_progress_bar=False, callbacks=[first])
    model.get_imputed_expression(gene_list=list(zeisel_small.var_names[:3]))
    second = _RecordModes()
    model.train_classifier(max_epochs=1, enable_progress_bar=False, callbacks=[second])
    assert first.eval_modules_seen and set(first.eval_modules_seen) == {0}
    assert second.eval_modules_seen and set(second.eval_modules_seen) == {0}


def test_inference_restores_the_mode_it_found(trained_small):
    model, _ = trained_small
    model.module.train()
    model.get_latent_representation()
    assert model.module.training and all(m.training for m in model.module.modules())
    model.module.eval()
    model.get_latent_representation()
    assert not model.module.training


def test_training_shows_no_lightning_product_tips(zeisel_small):
    import logging

    st.SCHyena.setup_anndata(zeisel_small)
    model = st.SCHyena(zeisel_small, **TINY)
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addHandler(handler)
    try:
        model.train(max_epochs=1, batch_size=35, enable_progress_bar=False)
    finally:
        lightning_log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages, "Lightning's own info (GPU available...) still reaches the log"
    assert not [m for m in messages if "Tip" in m], messages


def test_print_model_is_short_plain_lines(trained):
    model, _ = trained
    text = repr(model)
    assert text.startswith("SCHyena: 600 genes per cell as tokens\n")
    assert "Training status: trained (pretrain)" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert str(model) == text
