"""A pre-training corpus: several datasets, one gene vocabulary, cells streamed from disk.

:class:`CorpusDataModule` is a Lightning data module, the scvi-tools idiom for data that is not
one in-memory AnnData (scvi-tools' own custom data modules, e.g. for CELLxGENE Census or
lamindb collections, are passed to ``model.train(datamodule=...)`` the same way). It owns what
belongs to the data: the datasets, the vocabulary and how each dataset's genes map onto it, the
train/validation split, the order of the cells and their sharding between processes. Every
minibatch arrives in vocabulary order with the genes its cells' dataset did not measure marked
missing, so the network reads a mouse panel and a human panel, or a 3,000-gene and a 30,000-gene
panel, in one minibatch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningDataModule
from scvi import REGISTRY_KEYS
from torch.utils.data import BatchSampler, DataLoader, Dataset

from schyena_tools.model._vocabulary import match_genes_to_vocabulary
from schyena_tools.module import LIBRARY_KEY, MISSING_KEY
from schyena_tools.validation import check_batch_size, check_number

from ._readers import CorpusSource, open_dataset
from ._sampler import BlockShuffleSampler, cut_into_blocks

#: Cells per block: consecutive cells of one dataset read together (see :mod:`._sampler`).
DEFAULT_BLOCK_SIZE = 32
#: Blocks whose cells are shuffled together.
DEFAULT_BUFFER_BLOCKS = 16
#: Files a reader keeps open at once (each holds ~0.5 MB of HDF5 state); the least recently
#: read is closed and reopened when needed (about a millisecond).
MAX_OPEN_FILES = 32


def _key(gene: str, case_insensitive: bool) -> str:
    return gene.lower() if case_insensitive else gene


def corpus_vocabulary(
    panels: Iterable[pd.Index],
    vocabulary: str | Sequence[str] = "union",
    min_datasets: int | None = None,
    case_insensitive: bool = False,
) -> pd.Index:
    """The corpus's ordered gene vocabulary from the datasets' gene panels.

    ``"union"``: every gene measured by at least ``min_datasets`` datasets (default 1), in
    order of first appearance (the first dataset's genes in its order, then each next
    dataset's new genes in its order). With ``case_insensitive``, names that differ only by
    case are one gene, spelled as it first appears. A list of names is used as given.
    ``panels`` may be a generator: one panel is held at a time.
    """
    if not isinstance(vocabulary, str):
        given = pd.Index([str(gene) for gene in vocabulary], dtype=str)
        if min_datasets is not None:
            raise ValueError("min_datasets selects genes of the union; with a vocabulary list, leave it out.")
        if given.has_duplicates:
            raise ValueError(
                f"the vocabulary names genes twice (e.g. {given[given.duplicated()][:5].tolist()})."
            )
        if len(given) < 2:
            raise ValueError(f"the vocabulary needs at least 2 genes, got {len(given)}.")
        return given
    if vocabulary != "union":
        raise ValueError(f"vocabulary must be 'union' or a list of gene names, got {vocabulary!r}.")
    if min_datasets is not None:
        check_number(min_datasets, "min_datasets", integer=True, minimum=1)
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    n_panels = 0
    for panel in panels:
        n_panels += 1
        for gene in dict.fromkeys(_key(g, case_insensitive) for g in panel):
            counts[gene] = counts.get(gene, 0) + 1
        for gene in panel:
            spelling.setdefault(_key(gene, case_insensitive), gene)
    if min_datasets is not None and min_datasets > n_panels:
        raise ValueError(
            f"min_datasets must be at most the number of datasets ({n_panels}), got {min_datasets}."
        )
    needed = min_datasets or 1
    genes = pd.Index([spelling[key] for key, n in counts.items() if n >= needed], dtype=str)
    if len(genes) < 2:
        raise ValueError(
            f"only {len(genes)} genes are measured in at least {needed} datasets; lower min_datasets, "
            "or check that the datasets name genes the same way (case_insensitive=True for mouse and human)."
        )
    return genes


class CorpusDataset(Dataset):
    """Cells of all datasets by one global index, returned as vocabulary-ordered minibatches.

    ``dataset.__getitems__(indices)`` (what a ``DataLoader`` with a batch sampler calls) returns
    the tensors the module reads: ``"X"`` (counts, ``(cells, vocabulary)``, zero where not
    measured), ``"missing_genes"`` (``(cells, vocabulary)``, True where the cell's dataset did
    not measure the gene) and ``"library_size"`` (``(cells, 1)``: total counts over all the
    dataset's genes, the vocabulary's and the others, as when the model is applied to that
    dataset alone).

    Cells are read a block at a time (``block_size`` consecutive cells of one dataset, the
    sampler's blocks: one contiguous read) and the last ``cached_blocks`` blocks are kept, so a
    shuffle buffer of blocks is read from disk once while its minibatches are served; at most
    ``max_open_files`` files are open at once, so memory does not grow with the number of files.
    """

    def __init__(
        self,
        sources: Sequence[CorpusSource],
        vocabulary_size: int,
        block_size: int,
        cached_blocks: int,
        max_open_files: int = MAX_OPEN_FILES,
    ):
        self.sources = list(sources)
        self.vocabulary_size = vocabulary_size
        self.block_size = int(block_size)
        self.cached_blocks = int(cached_blocks)
        self.max_open_files = int(max_open_files)
        self.offsets = np.cumsum([0] + [s.n_cells for s in self.sources])
        self._cache: OrderedDict = OrderedDict()
        self._open: OrderedDict = OrderedDict()
        # Per dataset, once: the vocabulary position of each of its columns (-1: not in the
        # vocabulary; a vocabulary gene is matched to at most one column) and its missing mask.
        self._layout = []
        for source in self.sources:
            measured = np.flatnonzero(source.gene_index >= 0)
            position = np.full(source.n_genes, -1, dtype=np.int32)
            position[source.gene_index[measured]] = measured
            self._layout.append((position, source.gene_index < 0))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"], state["_open"] = OrderedDict(), OrderedDict()  # a worker keeps its own
        return state

    def _touch(self, dataset: int) -> None:
        """Keep at most ``max_open_files`` files open (least recently read closed first)."""
        self._open[dataset] = None
        self._open.move_to_end(dataset)
        if len(self._open) > self.max_open_files:
            oldest, _ = self._open.popitem(last=False)
            self.sources[oldest].close()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}

    def _block(self, dataset: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One block, read once and kept, in the vocabulary's columns.

        Returns the CSR arrays of its counts with vocabulary column numbers (``indptr``,
        ``indices``, ``data``) and its cells' library sizes. Moving a block into the
        vocabulary's columns when it is read makes a minibatch cost the same whatever the
        number of datasets it is drawn from: one row copy per cell, no work per dataset.
        """
        key = (dataset, block)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        source = self.sources[dataset]
        start = block * self.block_size
        cells = source.read_range(start, min(start + self.block_size, source.n_cells))
        if source.path is not None:
            self._touch(dataset)
        cells = sp.csr_matrix(cells, dtype=np.float32)
        library = np.asarray(cells.sum(axis=1), dtype=np.float32).ravel()
        columns = self._layout[dataset][0][cells.indices]
        kept = columns >= 0
        row_of_entry = np.repeat(np.arange(cells.shape[0]), np.diff(cells.indptr))
        indptr = np.zeros(cells.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_of_entry[kept], minlength=cells.shape[0]), out=indptr[1:])
        self._cache[key] = indptr, columns[kept], cells.data[kept], library
        if len(self._cache) > self.cached_blocks:
            self._cache.popitem(last=False)
        return self._cache[key]

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        rows = indices - self.offsets[which]
        counts = np.zeros((len(indices), self.vocabulary_size), dtype=np.float32)
        library = np.zeros((len(indices), 1), dtype=np.float32)
        for i, (dataset, row) in enumerate(zip(which.tolist(), rows.tolist(), strict=True)):
            block, within = divmod(row, self.block_size)
            indptr, columns, values, sizes = self._block(dataset, block)
            first, last = indptr[within], indptr[within + 1]
            counts[i, columns[first:last]] = values[first:last]
            library[i, 0] = sizes[within]
        missing = np.stack([self._layout[d][1] for d in which])
        return {
            REGISTRY_KEYS.X_KEY: torch.from_numpy(counts),
            MISSING_KEY: torch.from_numpy(missing),
            LIBRARY_KEY: torch.from_numpy(library),
        }


def _as_batch(batch):
    """The dataset returns whole minibatches already (``__getitems__``)."""
    return batch


class CorpusDataModule(LightningDataModule):
    """Several datasets with their own gene panels, pre-trained on as one, read from disk.

    Parameters
    ----------
    datasets
        h5ad paths or AnnData objects, each with its own genes and cells. Files are read from
        disk in blocks of consecutive cells (memory is bounded by a small cache of blocks and
        at most 32 open files, not by the number of cells or files); an AnnData is read from
        memory (a file-backed one from its file).
    layer
        Layer holding the raw counts, for every dataset, or one entry per dataset; ``None``
        uses ``X``.
    vocabulary
        ``"union"`` (default): every gene any dataset measured (or at least ``min_datasets``),
        in order of first appearance; or an ordered list of gene names (e.g. read from a file).
        In each dataset, the vocabulary genes it did not measure get the missing token: never
        a zero, never scored.
    min_datasets
        With ``"union"``: keep the genes measured in at least this many datasets.
    case_insensitive
        Match gene names ignoring case (exact matches first), as
        :meth:`~schyena_tools.SCHyena.load_query_data` does: mouse ``Gapdh`` and human ``GAPDH``
        are one token.
    names
        One name per dataset, for errors and :attr:`summary` (default: the file name).
    batch_size
        Cells per minibatch (per process under DDP).
    train_size
        Fraction of the blocks of cells used for training; the rest is the validation set
        (``1.0``: no validation).
    block_size, buffer_blocks
        Cells are read in blocks of ``block_size`` consecutive cells of one dataset; each epoch
        the blocks are permuted and the cells of ``buffer_blocks`` blocks at a time are
        shuffled together (see :class:`~schyena_tools.dataloaders.BlockShuffleSampler`).
    num_workers
        Worker processes of the data loaders (each opens the files itself).
    seed
        Fixes the split and, with the epoch, the order of the cells; default
        ``scvi.settings.seed``.

    Notes
    -----
    Why a data module: a corpus is not one AnnData, and scvi-tools' ``DataSplitter`` wants one.
    Lightning's data-module protocol is what ``scvi.train.TrainRunner`` consumes, and it is
    what scvi-tools' own streaming loaders implement. Every file is checked when the corpus is
    built (before any training), so a bad file is reported by name at once, not hours in.
    Under DDP each process reads its own share of the blocks and runs the same number of steps.

    Examples
    --------
    >>> corpus = st.dataloaders.CorpusDataModule(["a.h5ad", "b.h5ad"], layer="counts")
    >>> model = st.SCHyena.from_corpus(corpus, d_model=64)
    >>> model.train(max_epochs=10)
    >>> model.save("brain_model/")
    >>> query = st.SCHyena.load_query_data(adata_a, model)  # onto one dataset, its own genes

    """

    def __init__(
        self,
        datasets: Sequence,
        layer: str | None | Sequence[str | None] = None,
        vocabulary: str | Sequence[str] = "union",
        min_datasets: int | None = None,
        case_insensitive: bool = False,
        names: Sequence[str] | None = None,
        batch_size: int = 16,
        train_size: float = 0.9,
        block_size: int = DEFAULT_BLOCK_SIZE,
        buffer_blocks: int = DEFAULT_BUFFER_BLOCKS,
        num_workers: int = 0,
        seed: int | None = None,
    ):
        super().__init__()
        if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence) or len(datasets) == 0:
            raise ValueError("datasets must be a non-empty list of h5ad paths or AnnData objects.")
        layers = list(layer) if isinstance(layer, (list, tuple)) else [layer] * len(datasets)
        if len(layers) != len(datasets):
            raise ValueError(f"layer has {len(layers)} entries for {len(datasets)} datasets.")
        if names is not None and len(names) != len(datasets):
            raise ValueError(f"names has {len(names)} entries for {len(datasets)} datasets.")
        check_batch_size(batch_size)
        check_number(train_size, "train_size", minimum=0, maximum=1, exclusive_minimum=True)
        check_number(block_size, "block_size", integer=True, minimum=1)
        check_number(buffer_blocks, "buffer_blocks", integer=True, minimum=1)
        check_number(num_workers, "num_workers", integer=True, minimum=0)
        if seed is None:
            from scvi import settings

            seed = settings.seed or 0
        names = list(names) if names is not None else [None] * len(datasets)
        self.sources = [
            open_dataset(item, name, lay) for item, name, lay in zip(datasets, names, layers, strict=True)
        ]
        seen = pd.Index([s.name for s in self.sources])
        if seen.has_duplicates:
            raise ValueError(f"two datasets share the name {seen[seen.duplicated()][0]!r}; pass names=.")
        self.case_insensitive = case_insensitive
        # One file's gene names in memory at a time (re-read from the file): with hundreds of
        # files, holding them all cost ~2.5 MB a file.
        self.vocabulary = corpus_vocabulary(
            (s.gene_names() for s in self.sources), vocabulary, min_datasets, case_insensitive
        )
        for source in self.sources:
            names = source.gene_names()
            matched = match_genes_to_vocabulary(self.vocabulary, names, case_insensitive)
            source.gene_index = names.get_indexer(matched.fillna("\0").to_numpy()).astype(np.int64)
            if not (source.gene_index >= 0).any():
                raise ValueError(
                    f"{source.name}: none of its {len(names)} genes (e.g. {names[:3].tolist()}) is in the "
                    f"vocabulary (e.g. {self.vocabulary[:3].tolist()})."
                )
        self.batch_size = int(batch_size)
        self.block_size = int(block_size)
        self.buffer_blocks = int(buffer_blocks)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.train_size = float(train_size)
        # Two shuffle buffers of blocks in the cache: the one being served and the next.
        self.dataset = CorpusDataset(
            self.sources, len(self.vocabulary), self.block_size, 2 * self.buffer_blocks
        )
        self.blocks = cut_into_blocks([s.n_cells for s in self.sources], self.block_size)
        self.train_blocks, self.val_blocks = self._split()
        self.n_train = int((self.train_blocks[:, 1] - self.train_blocks[:, 0]).sum())
        self.n_val = int((self.val_blocks[:, 1] - self.val_blocks[:, 0]).sum())

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        blocks = self.blocks
        if self.train_size >= 1.0:
            return blocks, blocks[:0]
        if len(blocks) < 2:
            raise ValueError(
                f"the corpus has {len(blocks)} block of cells, so train_size={self.train_size} leaves no "
                f"validation block; pass a smaller block_size or train_size=1.0."
            )
        order = np.random.default_rng(self.seed).permutation(len(blocks))
        n_train = min(len(blocks) - 1, math.ceil(self.train_size * len(blocks)))
        return blocks[np.sort(order[:n_train])], blocks[np.sort(order[n_train:])]

    # ------------------------------------------------------------------ facts
    @property
    def n_obs(self) -> int:
        """Cells in the corpus."""
        return len(self.dataset)

    @property
    def n_vars(self) -> int:
        """Genes in the vocabulary."""
        return len(self.vocabulary)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per dataset: cells, genes, vocabulary genes it measured, counts layer."""
        return pd.DataFrame(
            {
                "cells": [s.n_cells for s in self.sources],
                "genes": [s.n_genes for s in self.sources],
                "vocabulary_genes_measured": [int((s.gene_index >= 0).sum()) for s in self.sources],
                "layer": [s.layer for s in self.sources],
                "file": [None if s.path is None else str(s.path) for s in self.sources],
            },
            index=pd.Index([s.name for s in self.sources], name="dataset"),
        )

    def __str__(self) -> str:
        return (
            f"CorpusDataModule: {len(self.sources)} datasets, {self.n_obs:,} cells, "
            f"{self.n_vars:,} vocabulary genes ({self.n_train:,} training / {self.n_val:,} validation cells)"
        )

    __repr__ = __str__

    # ------------------------------------------------------------------ loaders
    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader(self, blocks: np.ndarray, shuffle: bool) -> DataLoader:
        num_replicas, rank = self._replicas()
        sampler = BlockShuffleSampler(
            blocks,
            shuffle=shuffle,
            buffer_blocks=self.buffer_blocks,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
        )
        return DataLoader(
            self.dataset,
            batch_sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
            collate_fn=_as_batch,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Training cells, block-shuffled anew every epoch."""
        return self._loader(self.train_blocks, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation cells in a fixed order (none when ``train_size=1.0``)."""
        return self._loader(self.val_blocks, shuffle=False) if len(self.val_blocks) else []

    def sample_loader(self, n_cells: int, batch_size: int = 256) -> DataLoader:
        """About ``n_cells`` cells in whole blocks spread evenly over the corpus (for a
        data-dependent start), in their order.
        """
        n_blocks = min(len(self.blocks), math.ceil(n_cells / self.block_size))
        chosen = self.blocks[np.unique(np.linspace(0, len(self.blocks) - 1, n_blocks).astype(np.int64))]
        cells = np.concatenate([np.arange(start, stop) for start, stop in chosen])
        return DataLoader(
            self.dataset,
            batch_sampler=BatchSampler(cells.tolist(), batch_size, drop_last=False),
            collate_fn=_as_batch,
        )
