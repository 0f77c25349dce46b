"""A model for a corpus of several datasets (mixin of :class:`SCHyena`).

scvi-tools builds a model on one registered AnnData. A corpus has many, each with its own
genes, so :meth:`CorpusMixin.from_corpus` registers the model on a one-cell stand-in whose genes
are the corpus vocabulary (what :meth:`save` writes as the model's genes) and keeps the corpus,
a Lightning data module, for :meth:`train`; the network reads the corpus's minibatches, already
in vocabulary order with each dataset's unmeasured genes marked missing. Applied to one
dataset afterwards, the model goes through :meth:`load_query_data` like any pre-trained model.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from schyena_tools.module import LIBRARY_KEY, MISSING_KEY, cell_head_start_values

from ._progress import progress
from ._save_load import STANDIN_KEY, standin_anndata

#: Cells of a corpus read for the data-dependent start (gene means); every tenth of them,
#: up to 2,000, also for the principal axes.
N_START_CELLS = 20_000


class CorpusMixin:
    """``from_corpus`` and the corpus side of training for :class:`~schyena_tools.SCHyena`."""

    @classmethod
    def from_corpus(cls, corpus, **model_kwargs):
        """A new, untrained model for pre-training on ``corpus``.

        Parameters
        ----------
        corpus
            A :class:`~schyena_tools.dataloaders.CorpusDataModule`; its vocabulary becomes the
            model's gene vocabulary.
        **model_kwargs
            Network settings, as for :class:`SCHyena` (``d_model``, ``n_layers``, ...).

        Returns
        -------
        A model registered on a one-cell stand-in with the vocabulary's genes; :meth:`train`
        pre-trains it on the corpus. To embed, annotate or impute one dataset, map the trained
        model onto it: ``SCHyena.load_query_data(adata, model)`` (or save it and use
        :func:`schyena_tools.pretrained.load_model`).

        """
        from schyena_tools.dataloaders import CorpusDataModule

        if not isinstance(corpus, CorpusDataModule):
            raise TypeError(f"corpus must be a CorpusDataModule, got {type(corpus).__name__}")
        if "gene_vocabulary" in model_kwargs:
            raise ValueError(
                "a corpus model's vocabulary is the corpus's: set it with CorpusDataModule(vocabulary=...)."
            )
        standin = standin_anndata(corpus.vocabulary)
        with warnings.catch_warnings():
            # "Category 0 has fewer than 3 cells": the stand-in's one cell is never trained on.
            warnings.filterwarnings(
                "ignore", message="Category .* has fewer than 3 cells", category=UserWarning
            )
            cls.setup_anndata(standin)
            model = cls(standin, **model_kwargs)
        model._corpus = corpus
        model.corpus_summary_ = corpus.summary.reset_index().to_dict(orient="list")
        return model

    def _check_corpus(self, datamodule) -> None:
        """The data module reads the model's vocabulary in its order."""
        vocabulary = getattr(datamodule, "vocabulary", None)
        if vocabulary is None or not self.gene_vocabulary.equals(vocabulary):
            raise ValueError(
                "the data module's vocabulary is not this model's: build the model from it "
                "(SCHyena.from_corpus(corpus)), or give the corpus this model's genes "
                "(CorpusDataModule(..., vocabulary=model.gene_vocabulary))."
            )
        if self.module.gene_index is not None:
            raise ValueError(
                "this model is registered on data with its own gene panel; a corpus is read in "
                "vocabulary order. Pre-train a model built with SCHyena.from_corpus(corpus)."
            )

    def _refuse_standin(self) -> None:
        """A clear error where the one-cell stand-in would be used as data."""
        if self.adata is not None and self.adata.uns.get(STANDIN_KEY, False):
            raise ValueError(
                "this model has no cells of its own: it is registered on a one-cell stand-in for its "
                "training data (it was pre-trained on a corpus, or loaded from its folder alone). Map it "
                "onto your data first: model = SCHyena.load_query_data(adata, model), or "
                "st.pretrained.load_model(path, adata)."
            )

    @torch.inference_mode()
    def _initialize_from_corpus(
        self, corpus, cell_objective: str = "mse", show_progress: bool = False
    ) -> None:
        """The data-dependent start of :meth:`train` (see ``_initialize_from_data``) on a corpus.

        Gene means over up to :data:`N_START_CELLS` cells spread evenly over the corpus, each
        gene over the cells whose dataset measured it; principal axes on every tenth of them
        (at most 2,000), with unmeasured genes set to their mean.
        """
        loader = corpus.sample_loader(N_START_CELLS)
        total = torch.zeros(len(self.gene_vocabulary))
        head_total = torch.zeros(len(self.gene_vocabulary))
        measured = torch.zeros(len(self.gene_vocabulary))
        sampled, seen = [], 0
        for tensors in progress(loader, "Data-dependent start: cells of the corpus", show_progress):
            values, missing = self.module.normalize_and_align(
                tensors[REGISTRY_KEYS.X_KEY].float(), tensors[MISSING_KEY], tensors[LIBRARY_KEY]
            )
            observed = (~missing).float()
            summary = cell_head_start_values(values, cell_objective, self.module.target_sum)
            total += (values * observed).sum(0)
            head_total += (summary * observed).sum(0)
            measured += observed.sum(0)
            keep = (np.arange(seen, seen + values.shape[0]) % 10) == 0
            sampled.append((values[torch.from_numpy(keep)], missing[torch.from_numpy(keep)]))
            seen += values.shape[0]
        self.module.initialize_cell_head(head_total / measured.clamp_min(1.0), cell_objective)
        means = total / measured.clamp_min(1.0)
        values = torch.cat([v for v, _ in sampled])[:2000]
        missing = torch.cat([m for _, m in sampled])[:2000]
        self.module.encoder.add_principal_axes(torch.where(missing, means, values))
