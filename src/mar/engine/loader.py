"""The data loader of training and evaluation: this rank's shard, batched."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data import collate
from ..runtime.distributed import DistInfo, ShardSampler


def build_loader(dataset, batch_size: int, info: DistInfo, *, workers: int, shuffle: bool,
                 seed: int = 0) -> DataLoader:
    """A loader over this rank's shard. It draws its workers' base seed from its own
    generator, never from the global torch RNG, which dropout and drop path use: so
    starting an epoch's iterator does not shift their random stream (exact resume)."""
    sampler = ShardSampler(len(dataset), info.rank, info.world_size, shuffle=shuffle,
                           seed=seed, batch_size=batch_size if shuffle else 1)
    return DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=shuffle,
                      pin_memory=info.device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed))
