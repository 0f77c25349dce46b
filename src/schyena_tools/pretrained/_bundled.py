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
    ``knn10_label_agreement_subclass`` / ``_major_class`` (of its embedding of the 550 Zeisel
    training cells), ``corpus`` (the data sets and their cells), ``held_out`` (zero-shot and
    few-shot figures on held-out sets, side by side with PCA of HVGs and logistic regression)
    and ``zeisel_brain_cells_in_training``: the ``obs_names`` of
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

    What it is: ``d_model=32``, 2 bidirectional Hyena blocks, a vocabulary of 20,149 genes (those
    measured in at least two of its five training sets, matched ignoring case, Zeisel's genes
    first), pre-trained by masked expression modelling (no labels) on one corpus
    (:class:`~schyena_tools.dataloaders.CorpusDataModule`) of every full-length brain data set the
    package may ship (MIT / BSD): Zeisel 2015 cortex and hippocampus (550 cells), La Manno 2016
    midbrain (243), Campbell 2017 hypothalamus (200), BICAN human caudate (390) and Hochgerner
    2018 dentate gyrus (100), 1,483 cells shuffled across the sets in every epoch, on 2 shared CPU
    cores (:func:`zeisel_brain_model_card` gives the epochs and the time). The other 2,455 cells
    of :func:`~schyena_tools.datasets.zeisel_brain` were left out: they are the evaluation cells
    of the benchmarks and the annotation tutorial. It is a *small* model trained on *few* cells:
    a starting point for fine-tuning on brain data, not a replacement for pre-training on a
    large atlas. ``tools/pretrain_bundled_model.py`` reproduces it; held-out figures against PCA
    and logistic regression (``tools/evaluate_bundled_model.py``) are in the card's
    ``held_out``.

    Parameters
    ----------
    adata
        Raw counts to apply it to, any gene panel: genes are matched by name to the model's
        vocabulary (see :meth:`SCHyena.load_query_data`). Register it first with
        ``SCHyena.setup_anndata(adata, labels_key=...)`` to fine-tune a classifier on its
        labels. When None, the model is returned on a fresh
        :func:`~schyena_tools.datasets.zeisel_brain_all_genes` (550 of its pre-training cells,
        genes matched by name).
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
