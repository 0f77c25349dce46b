"""The scHyena pre-trained on mouse brain and shipped inside the package."""

from __future__ import annotations

import json
from pathlib import Path

from anndata import AnnData

from ._load import load_model

#: Folder of the bundled model (``model.pt``, written by ``tools/pretrain_bundled_model.py``).
ZEISEL_BRAIN_MODEL_DIR = Path(__file__).parent / "_files" / "zeisel_brain"


def zeisel_brain_model_card() -> dict:
    """What the bundled model is: settings, training time, losses and measured figures.

    Written by ``tools/pretrain_bundled_model.py`` when the model was made. Among others:
    ``settings``, ``train_seconds``, ``epochs_completed``, ``final_validation_loss``,
    ``knn10_label_agreement_subclass`` / ``_major_class`` (of its embedding of the 550 training
    cells) and ``zeisel_brain_cells_in_training``: the ``obs_names`` of
    :func:`~schyena_tools.datasets.zeisel_brain` cells that are among its training cells (the two
    releases of the study share 550 cells), to leave out of evaluations.

    Returns
    -------
    A dict read from ``model_card.json`` beside the weights.

    """
    card = ZEISEL_BRAIN_MODEL_DIR / "model_card.json"
    return json.loads(card.read_text())


def load_zeisel_brain_model(adata: AnnData | None = None, accelerator: str = "cpu"):
    """A small scHyena pre-trained on full-length mouse brain cells, ready to fine-tune.

    What it is: ``d_model=32``, 2 bidirectional Hyena blocks, a vocabulary of the 19,972 genes of
    Zeisel et al. (2015), pre-trained by masked expression modelling (no labels) on all the
    full-length MIT-licensed mouse brain data bundled with the package: the 550 cortex and
    hippocampus cells of :func:`schyena_tools.datasets.zeisel_brain_all_genes` and the 243
    midbrain dopaminergic neurons of :func:`schyena_tools.datasets.lamanno_midbrain_dopaminergic`
    (alternating one epoch on each, 3 rounds), in 21 minutes on 2 shared CPU cores. The other
    2,455 cells of :func:`~schyena_tools.datasets.zeisel_brain` were left out: they are the
    evaluation cells of the benchmarks and the annotation tutorial. It is a *small* model
    trained on *few* cells: a starting point that makes fine-tuning on mouse brain
    data quicker and better than starting from random weights, not a replacement for
    pre-training on a large atlas. ``tools/pretrain_bundled_model.py`` reproduces it; the
    training record is in ``model.phase_history_`` and the figures measured when it was made are
    in :func:`zeisel_brain_model_card`.

    Parameters
    ----------
    adata
        Raw counts to apply it to, any gene panel: genes are matched by name to the model's
        vocabulary (see :meth:`SCHyena.load_query_data`). Register it first with
        ``SCHyena.setup_anndata(adata, labels_key=...)`` to fine-tune a classifier on its
        labels. When None, the model is returned on the data it was trained on (a fresh
        :func:`~schyena_tools.datasets.zeisel_brain_all_genes`).
    accelerator
        Where to put the weights.

    Returns
    -------
    :class:`~schyena_tools.SCHyena`.

    Examples
    --------
    >>> import schyena_tools as st
    >>> query = st.datasets.zeisel_brain()  # 3,005 cells, another gene panel (4,000 genes)
    >>> st.SCHyena.setup_anndata(query, labels_key="cell_type")
    >>> model = st.pretrained.load_zeisel_brain_model(query)
    >>> model.train_classifier(max_epochs=5)

    """
    if adata is None:
        from schyena_tools import datasets

        adata = datasets.zeisel_brain_all_genes()
    return load_model(ZEISEL_BRAIN_MODEL_DIR, adata, accelerator=accelerator)
