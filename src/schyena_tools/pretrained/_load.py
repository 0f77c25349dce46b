"""Load a saved scHyena onto any AnnData, whatever its gene panel."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData


def load_model(path: str | Path, adata: AnnData | None = None, accelerator: str = "cpu"):
    """Load a model saved with ``model.save(path)`` onto ``adata``, whatever its gene panel.

    Unlike :meth:`SCHyena.load`, ``adata`` does not need the genes (or ``obs`` keys) of the
    training data: the saved model is first rebuilt on a one-cell stand-in for its training
    data, then mapped onto ``adata`` with :meth:`SCHyena.load_query_data` (genes matched by
    name; vocabulary genes that ``adata`` lacks get the missing token).

    Parameters
    ----------
    path
        Folder written by ``model.save``.
    adata
        AnnData of raw counts to apply the model to. Register it first with
        ``SCHyena.setup_anndata`` to choose its keys (e.g. ``labels_key`` for fine-tuning a
        classifier); otherwise it is registered with the saved model's arguments. When None,
        the model comes back on the one-cell stand-in: fine for inspecting it or for
        :meth:`SCHyena.load_query_data` later, useless for training.
    accelerator
        Where to put the weights (``"cpu"``, ``"gpu"``, ``"auto"``).

    Returns
    -------
    :class:`~schyena_tools.SCHyena` registered on ``adata``.

    """
    from schyena_tools.model import SCHyena
    from schyena_tools.model._save_load import read_saved_model, standin_anndata

    folder = Path(path)
    saved = read_saved_model(folder)
    var_names = pd.Index(np.asarray(saved["var_names"]).astype(str))
    registry = saved["attr_dict"]["registry_"]
    with warnings.catch_warnings():
        # scvi-tools warns that the one-cell stand-in has "fewer than 3 cells" per category;
        # the stand-in is never trained on, so the warning would only confuse.
        warnings.filterwarnings("ignore", message="Category .* has fewer than 3 cells", category=UserWarning)
        reference = SCHyena.load(
            str(folder), adata=standin_anndata(var_names, registry), accelerator=accelerator
        )
    if adata is None:
        return reference
    return SCHyena.load_query_data(adata, reference)
