"""The data loader of training: this rank's shard, batched."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data import collate
from ..runtime.distributed import DistInfo, ShardSampler


def build_loader(dataset, batch_size: int, info: DistInfo, *, workers: int,
                 seed: int = 0) -> DataLoader:
    """A shuffled loader over this rank's shard, for every epoch of a run.

    Its workers persist across epochs (forked once, a decoded-video cache kept); the
    sampler hands them each item's epoch with its index, so augmentation still changes
    every epoch. It draws its workers' base seed from its own generator, never from the
    global torch RNG, which dropout and drop path use: so starting an epoch's iterator
    does not shift their random stream (exact resume). Batches land in pinned memory on
    a GPU, for ``non_blocking`` copies."""
    sampler = ShardSampler(len(dataset), info.rank, info.world_size, shuffle=True,
                           seed=seed, batch_size=batch_size, with_epoch=True)
    return DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=True,
                      pin_memory=info.device.type == "cuda", persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))
