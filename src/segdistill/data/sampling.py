"""Training-sample order and augmentation seeds that are pure functions of (seed, epoch, position).

Exact resume needs the rest of an epoch to be reproducible without replaying its start, whatever the
number of DataLoader workers. So nothing about a training sample depends on a generator's running
state:

* :class:`EpochBatchSampler` draws epoch ``e``'s permutation from ``numpy.random.default_rng([seed, e])``,
  together with one augmentation seed per position, shards it over ranks and can start at any batch
  (:meth:`EpochBatchSampler.set_start`);
* :class:`SeededSamples` reseeds the dataset's augmentation pipeline with that sample's seed before
  loading it, so the augmentation of a sample does not depend on which worker loads it or on what that
  worker loaded before. As a side effect, results no longer depend on ``data.workers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from .transforms import reseed_transform


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation_seed)`` pairs, ``batch_size`` per rank, last partial batch dropped.

    Epoch ``e``: ``perm = default_rng([seed, e]).permutation(size)`` and one seed per position; the
    first ``len(self) * batch_size * world_size`` positions are kept and rank ``r`` takes positions
    ``r, r + world_size, ...`` (as ``DistributedSampler`` shards). ``set_epoch`` picks the epoch,
    ``set_start(k)`` skips the first ``k`` batches of it (once: the next epoch starts at 0 again).
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size/rank/world_size: {batch_size}/{rank}/{world_size}")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch: int) -> None:
        self.start = batch

    def epoch_samples(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's ``(index, augmentation_seed)`` for every position of ``epoch`` (no batching)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.size)
        seeds = rng.integers(0, 2**31 - 1, size=self.size)
        kept = len(self) * self.batch_size * self.world_size
        positions = range(self.rank, kept, self.world_size)
        return [(int(order[p]), int(seeds[p])) for p in positions]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        samples = self.epoch_samples(self.epoch)
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            yield samples[b * self.batch_size : (b + 1) * self.batch_size]


class SeededSamples(Dataset):
    """Wraps a dataset with an augmentation ``transform`` attribute (or a ``set_sample_seed`` method):
    item ``(index, seed)`` reseeds the augmentation with ``seed``, then returns ``dataset[index]``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_state"):  # an albumentations pipeline
            reseed_transform(transform, seed)
        if hasattr(self.dataset, "set_sample_seed"):  # a dataset drawing its own augmentation
            self.dataset.set_sample_seed(seed)
        return self.dataset[index]
