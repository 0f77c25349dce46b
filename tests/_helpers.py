"""Plain helpers and settings shared by the tests (fixtures live in conftest.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import schyena_tools as st
from schyena_tools.nn import SCHyenaEncoder

#: Network settings small enough for CI (2 CPU cores) yet with every component present.
TINY = dict(d_model=8, n_layers=1, filter_hidden_dim=8, mlp_ratio=1)

#: One short training phase.
SMALL = dict(max_epochs=1, batch_size=16, enable_progress_bar=False)

#: The real data sets beside the checkout (see ../shared/data/SOURCES.md).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_encoder(n_genes=50, **kwargs):
    """A small seeded encoder for tests on random tensors."""
    torch.manual_seed(0)
    defaults = dict(d_model=16, n_layers=2, filter_hidden_dim=16)
    defaults.update(kwargs)
    return SCHyenaEncoder(n_genes, **defaults)


def subsample(adata, n_cells, n_genes=None, seed=0):
    rng = np.random.default_rng(seed)
    # keep every label represented: take cells round-robin over labels
    order = np.concatenate(
        [
            rng.permutation(np.flatnonzero(adata.obs["cell_type"] == c))
            for c in adata.obs["cell_type"].cat.categories
        ]
    )
    labels = adata.obs["cell_type"].to_numpy()[order]
    rank = np.zeros(len(order), dtype=int)
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    chosen = order[np.argsort(rank, kind="stable")[:n_cells]]
    sub = adata[np.sort(chosen)]
    if n_genes is not None:
        sub = sub[:, :n_genes]
    sub = sub.copy()
    sub.obs["cell_type"] = sub.obs["cell_type"].cat.remove_unused_categories()
    return sub


def registered(adata) -> bool:
    """Whether scvi-tools registration wrote into ``adata``."""
    return "_scvi_uuid" in adata.uns


def setup_fails(adata, error, match, **setup_kwargs):
    """``setup_anndata`` raises ``error`` matching ``match`` and registers nothing."""
    with pytest.raises(error, match=match):
        st.SCHyena.setup_anndata(adata, **setup_kwargs)
    assert not registered(adata), "the check must run before anything is registered"


def unregistered_copy(adata):
    """A copy of ``adata`` without scvi-tools' registration."""
    copy = adata.copy()
    for key in [k for k in copy.uns if k.startswith("_scvi")]:
        del copy.uns[key]
    copy.obs = copy.obs.drop(columns=[c for c in copy.obs if c.startswith("_scvi")])
    return copy


def run_script(text: str, folder: Path, *args) -> dict:
    """Run ``text`` as a Python script in ``folder`` (argv: the folder, then ``args``), as a user's
    DDP script runs; it must succeed and write ``result.json`` there, which is returned."""
    script = folder / "script.py"
    script.write_text(text)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((folder / "result.json").read_text())
