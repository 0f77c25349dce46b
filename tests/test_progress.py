"""Progress: a bar that moves within each epoch, one over every inference call, quiet when asked."""

import schyena_tools as st
from schyena_tools.model._progress import StepProgressBar, with_step_progress

from ._helpers import TINY


def test_training_uses_the_per_step_bar_unless_turned_off():
    chosen = with_step_progress({})
    assert chosen["simple_progress_bar"] is False
    assert any(isinstance(c, StepProgressBar) for c in chosen["callbacks"])
    assert with_step_progress({"enable_progress_bar": False}) == {"enable_progress_bar": False}
    # a caller's own choice of bar is respected
    assert with_step_progress({"simple_progress_bar": True}) == {"simple_progress_bar": True}


def test_training_bar_moves_within_the_epoch_without_v_num(zeisel_small, capsys):
    adata = zeisel_small[:40].copy()
    st.SCHyena.setup_anndata(adata)
    model = st.SCHyena(adata, **TINY)
    model.train(max_epochs=1, batch_size=8, train_size=1.0)
    captured = capsys.readouterr()
    err = captured.out + captured.err  # Lightning's bar writes to stdout
    # 40 cells / 8 per batch: the bar counts the 5 steps of the one epoch
    assert "5/5" in err
    assert "v_num" not in err
    assert "train_loss" in err


def test_inference_calls_show_a_bar_and_are_quiet_when_asked(trained_small, capsys):
    model, adata = trained_small
    capsys.readouterr()
    model.get_latent_representation(batch_size=8)
    shown = capsys.readouterr().err
    assert "Embedding" in shown
    model.get_latent_representation(batch_size=8, progress_bar=False)
    model.get_imputed_expression(batch_size=8, progress_bar=False)
    assert capsys.readouterr().err == ""
    model.get_imputed_expression(batch_size=8)
    assert "Imputing" in capsys.readouterr().err


def test_quiet_training_prints_no_bar(zeisel_small, capsys):
    adata = zeisel_small[:20].copy()
    st.SCHyena.setup_anndata(adata)
    model = st.SCHyena(adata, **TINY)
    capsys.readouterr()
    model.train(max_epochs=1, batch_size=8, train_size=1.0, enable_progress_bar=False)
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "it/s" not in err and "Data-dependent start" not in err
