"""Distributed samplers: an infinite, resumable training stream and sharded inference.

Training (as detectron2's ``TrainingSampler``): one global stream of epochs, each a permutation
seeded by (seed, epoch), dealt round-robin to the ranks, so every rank sees a different shard
and all ranks agree without communicating. Position ``p`` of the global stream is a pure
function of (seed, p): resuming at iteration ``it`` with ``start = it * per_rank_batch``
replays exactly the samples (and augmentation seeds) an uninterrupted run would have used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def dist_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainingSampler(Sampler):
    """Yields ``(index, (seed, position))``; :class:`InstanceDataset` seeds augmentation with it."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        default_rank, default_size = dist_rank_and_size()
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank = default_rank if rank is None else rank
        self.world_size = default_size if world_size is None else world_size
        self.start = start
        self._cache: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._cache[1]

    def item(self, position: int) -> tuple[int, tuple[int, int]]:
        """The sample at a global stream position."""
        epoch, offset = divmod(position, self.size)
        return int(self.order(epoch)[offset]), (self.seed, position)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int]]]:
        k = self.start
        while True:
            yield self.item(self.rank + k * self.world_size)
            k += 1


class InferenceSampler(Sampler):
    """Each rank a contiguous shard (sizes differ by at most one); every index exactly once."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        default_rank, default_size = dist_rank_and_size()
        rank = default_rank if rank is None else rank
        world_size = default_size if world_size is None else world_size
        base, extra = divmod(size, world_size)
        shard_sizes = [base + int(r < extra) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        self.indices = range(begin, begin + shard_sizes[rank])

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
