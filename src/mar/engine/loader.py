"""The data loader of training: this rank's share, batched, for a list or for shards."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data import collate
from ..data.sharded import ShardedVideos
from ..runtime.distributed import DistInfo, ShardSampler


class TrainLoader(DataLoader):
    """A shuffled loader over this rank's share of the training data, for every epoch of
    a run: one interface for a list (:class:`mar.data.VideoDataset`) and for shards
    (:class:`mar.data.sharded.ShardedVideos`). Before each epoch's ``iter``,
    :meth:`set_epoch` gives the epoch and the samples this rank already had of it (a
    resume); :attr:`videos_per_process` is what one rank sees per epoch.

    A list's workers persist across epochs (forked once, a decoded-video cache kept); the
    sampler hands them each item's epoch with its index. Shards' workers do not: each
    epoch's ``iter`` forks them with the dataset's epoch and start. The loader draws its
    workers' base seed from its own generator, never from the global torch RNG, which
    dropout and drop path use: so starting an epoch's iterator does not shift their
    random stream (exact resume). Batches land in pinned memory on a GPU, for
    ``non_blocking`` copies."""

    def __init__(self, dataset, batch_size: int, info: DistInfo, *, workers: int,
                 seed: int = 0):
        common = dict(num_workers=workers, collate_fn=collate,
                      pin_memory=info.device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed))
        if isinstance(dataset, ShardedVideos):
            dataset = dataset.for_rank(info.rank, info.world_size, workers=workers,
                                       batch_size=batch_size)
            super().__init__(dataset, batch_size, persistent_workers=False, **common)
            self.videos_per_process = dataset.videos_per_process
        else:
            sampler = ShardSampler(len(dataset), info.rank, info.world_size, shuffle=True,
                                   seed=seed, batch_size=batch_size, with_epoch=True)
            super().__init__(dataset, batch_size, sampler=sampler, drop_last=True,
                             persistent_workers=workers > 0, **common)
            self.videos_per_process = len(sampler)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``, of which this rank already had ``start`` samples."""
        target = self.dataset if isinstance(self.dataset, ShardedVideos) else self.sampler
        target.set_epoch(epoch, start)


def build_loader(dataset, batch_size: int, info: DistInfo, *, workers: int,
                 seed: int = 0) -> TrainLoader:
    """The training loader of ``dataset`` on this rank (:class:`TrainLoader`)."""
    return TrainLoader(dataset, batch_size, info, workers=workers, seed=seed)
