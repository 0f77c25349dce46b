"""Data modules beyond one in-memory AnnData: a pre-training corpus of several datasets, from disk."""

from ._corpus import CorpusDataModule, CorpusDataset, corpus_vocabulary
from ._readers import CorpusSource, open_dataset
from ._sampler import BlockShuffleSampler, cut_into_blocks

__all__ = [
    "BlockShuffleSampler",
    "CorpusDataModule",
    "CorpusDataset",
    "CorpusSource",
    "corpus_vocabulary",
    "cut_into_blocks",
    "open_dataset",
]
