"""A rank-sharded, resumable sampler whose items carry the epoch, so augmentations can be seeded per sample.

Why per-sample seeds: with DataLoader workers, the global RNG stream an image's augmentation draws from
depends on which worker served it and on what that worker did before. Seeding each sample from
(seed, epoch, index) makes the augmented tensor a pure function of those three, whatever the worker count,
and lets a resumed run continue mid-epoch with exactly the images and augmentations the uninterrupted run
would have used.

The data layer is handed rank and world size; it never talks to torch.distributed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

# An item the sampler yields and the dataset receives: (epoch, index into the file list).
SampleKey = tuple[int, int]


class ShardedEpochSampler(Sampler[SampleKey]):
    """This rank's share of a seeded permutation of ``num_items``, as (epoch, index) keys.

    Every rank draws the same permutation for an epoch (from ``seed`` and the epoch) and takes every
    ``world_size``-th item starting at ``rank``; the tail that does not divide evenly is dropped, so all ranks
    run the same number of steps. ``set_epoch(epoch, start)`` must be called before each epoch; ``start``
    skips this rank's first ``start`` items (those a resumed run already trained on) without loading them.
    """

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if num_items < world_size:
            raise ValueError(f"{num_items} items cannot be shared by {world_size} ranks")
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        """Items per rank and epoch (the full epoch, whatever ``start`` is)."""
        return self.num_items // self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        self.epoch = epoch
        self.start = start

    def order(self, epoch: int) -> list[int]:
        """The epoch's global order (the same on every rank)."""
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        mine = self.order(self.epoch)[: len(self) * self.world_size][self.rank :: self.world_size]
        return ((self.epoch, index) for index in mine[self.start :])


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample: distinct for every (seed, epoch, index), stable across runs."""
    return ((base_seed * 1_000_003 + epoch) * 2_147_483_647 + index) % (2**63 - 1)
