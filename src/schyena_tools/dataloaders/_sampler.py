"""Block shuffling: cells in a new order every epoch, read from disk in near-contiguous runs.

A corpus is cut into *blocks* of consecutive cells of one dataset. Each epoch the blocks are
permuted, taken ``buffer_blocks`` at a time, and the cells of those blocks are shuffled among
themselves before they are handed out. A minibatch therefore mixes cells of up to
``buffer_blocks`` places of the corpus (of different datasets), while the reader touches few,
short ranges of each file; the sampler's state is one row per block, not one per cell. This is
the scheme of annbatch and scDataset (block sampling with a shuffle buffer), written for
``torch.utils.data.Sampler`` so that Lightning calls :meth:`BlockShuffleSampler.set_epoch`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def cut_into_blocks(n_cells_per_dataset, block_size: int) -> np.ndarray:
    """``(n_blocks, 2)`` start and stop (global cell indices) of blocks of ``block_size`` cells.

    Blocks never span two datasets; the last block of a dataset may be shorter.
    """
    blocks = []
    offset = 0
    for n_cells in n_cells_per_dataset:
        starts = np.arange(0, n_cells, block_size, dtype=np.int64)
        stops = np.minimum(starts + block_size, n_cells)
        blocks.append(np.stack([starts + offset, stops + offset], axis=1))
        offset += int(n_cells)
    return np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int64)


class BlockShuffleSampler(Sampler[int]):
    """Global cell indices, block-shuffled, for one process of ``num_replicas``.

    Parameters
    ----------
    blocks
        ``(n_blocks, 2)`` start and stop of each block (see :func:`cut_into_blocks`).
    shuffle
        New order every epoch (training); ``False`` keeps the blocks' order (validation).
    buffer_blocks
        Blocks whose cells are shuffled together.
    seed
        With the epoch, fixes the order: every process draws the same permutation and takes its
        own share, and a resumed run repeats the interrupted epoch's order.
    num_replicas, rank
        Processes training together (Lightning DDP) and this one's rank. Each gets every
        ``num_replicas``-th block of the permutation and exactly ``len(self)`` cells (wrapping
        round its own blocks when its share is short), so that every process runs the same
        number of steps.

    """

    def __init__(
        self,
        blocks: np.ndarray,
        shuffle: bool = True,
        buffer_blocks: int = 16,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        blocks = np.asarray(blocks, dtype=np.int64).reshape(-1, 2)
        if len(blocks) == 0:
            raise ValueError("a sampler needs at least one block of cells")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not among {num_replicas} processes")
        self.blocks = blocks
        self.shuffle = shuffle
        self.buffer_blocks = max(1, int(buffer_blocks))
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.n_cells = int((blocks[:, 1] - blocks[:, 0]).sum())

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(1, self.n_cells // self.num_replicas)

    def _own_blocks(self, rng: np.random.Generator) -> np.ndarray:
        order = rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
        mine = order[self.rank :: self.num_replicas]
        if len(mine) == 0:  # fewer blocks than processes: borrow one
            mine = order[self.rank % len(order) : self.rank % len(order) + 1]
        return self.blocks[mine]

    def _cells(self, own: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        for first in range(0, len(own), self.buffer_blocks):
            cells = np.concatenate(
                [np.arange(start, stop) for start, stop in own[first : first + self.buffer_blocks]]
            )
            if self.shuffle:
                rng.shuffle(cells)
            yield cells

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        own = self._own_blocks(rng)
        remaining = len(self)
        while remaining > 0:
            for cells in self._cells(own, rng):
                take = cells[:remaining]
                yield from take.tolist()
                remaining -= len(take)
                if remaining == 0:
                    return
