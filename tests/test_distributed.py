"""Multi-process training (Lightning DDP) on CPU: two gloo processes, as a user's script runs it."""

import textwrap

import pytest
import torch

import schyena_tools as st
from schyena_tools.model._training_plan import distributed_settings, is_distributed

from ._helpers import TINY, run_script

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import scvi
    import torch
    import schyena_tools as st

    out = sys.argv[1]
    scvi.settings.seed = 0
    torch.set_num_threads(1)
    adata = st.datasets.zeisel_brain()[::60][:48, :300].copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    model = st.SCHyena(adata, **{tiny})
    before = {{k: v.clone() for k, v in model.module.encoder.state_dict().items()}}
    common = dict(max_epochs=2, batch_size=8, accelerator="cpu", devices=2, strategy="ddp",
                  enable_progress_bar=False)
    model.train(**common)
    model.train_classifier(**common)
    trainer = model.trainer
    if trainer.is_global_zero:
        unchanged = [k for k, v in model.module.encoder.state_dict().items() if torch.equal(v, before[k])]
        model.save(out + "/model", overwrite=True)
        json.dump({{
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "train_batches": int(trainer.num_training_batches),
            "unchanged": unchanged,
            "history": sorted(model.history),
        }}, open(out + "/result.json", "w"))
    """
)


def test_ddp_fixes_apply_only_to_ddp():
    trainer_kwargs, splitter_kwargs = distributed_settings({"strategy": "ddp", "devices": 2}, None)
    assert trainer_kwargs["strategy"] == "ddp_find_unused_parameters_true"
    assert splitter_kwargs == {"distributed_sampler": True}
    # the user's own choice is kept, and the inputs are not modified
    given = {"distributed_sampler": False}
    _, splitter_kwargs = distributed_settings({"strategy": "ddp_spawn"}, given)
    assert splitter_kwargs == {"distributed_sampler": False} and given == {"distributed_sampler": False}
    assert distributed_settings({"enable_progress_bar": False}, None) == ({"enable_progress_bar": False}, {})
    assert not is_distributed(None) and not is_distributed("auto") and is_distributed("ddp_notebook")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_ddp_training_on_two_cpu_processes(tmp_path):
    report = run_script(SCRIPT.format(tiny=repr(TINY)), tmp_path)
    assert report["world_size"] == 2 and report["strategy"] == "DDPStrategy"
    # 48 cells, 90% for training, split over 2 processes in minibatches of 8: 3 batches each
    # (5 if every process saw every cell).
    assert report["train_batches"] == 3, report
    # every encoder weight trained but the missing-gene token (no gene is missing here)
    assert report["unchanged"] == ["missing_token"], report["unchanged"]
    assert "accuracy_train" in report["history"] and "train_loss" in report["history"]
    model = st.SCHyena.load(str(tmp_path / "model"), adata=_registered_slice())
    assert model.is_trained


def _registered_slice():
    adata = st.datasets.zeisel_brain()[::60][:48, :300].copy()
    st.SCHyena.setup_anndata(adata, labels_key="cell_type")
    return adata
