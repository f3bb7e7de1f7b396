"""Data-parallel plumbing: torchrun's environment in, rank/world/device out.

A plain ``python``/``mar`` run is a world of one; under ``torchrun`` the process group
is initialised with NCCL on GPUs and gloo on CPU. Multi-node runs use torchrun's usual
``--nnodes --node-rank --master-addr`` arguments; nothing here changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and set up the group.

    ``device`` is ``--device`` (:func:`mar.runtime.device.resolve_device`); ``cuda``
    without an index is this process's local rank's GPU."""
    from ..errors import ConfigError
    from .device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is not None and world > 1:
            raise ConfigError(f"device {dev}: under torchrun each process takes its "
                              "LOCAL_RANK's GPU; pass --device cuda (choose the GPUs with "
                              "CUDA_VISIBLE_DEVICES)")
        dev = torch.device("cuda", local) if dev.index is None else dev
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank, world, local, dev)


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's ``obj`` on rank 0, in rank order; None on the other ranks."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (the object itself in a world of one)."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(value: float, info: DistInfo) -> float:
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(torch.utils.data.Sampler):
    """This rank's share of an epoch's order, resumable mid-epoch.

    Training (``shuffle=True``): a permutation seeded by (seed, epoch), trimmed to a
    multiple of ``world_size * batch_size`` so every rank runs the same number of full
    batches, then every ``world_size``-th index. Evaluation (``shuffle=False``): indices
    rank, rank + world, ...: every item exactly once over all ranks, no padding, so no
    view is counted twice. ``start`` skips the first items of the epoch (resume).
    ``with_epoch=True`` yields ``(index, epoch)`` pairs: the epoch reaches a dataset in
    persistent workers, which never see :meth:`set_epoch` calls in the main process.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, *, shuffle: bool,
                 seed: int = 0, batch_size: int = 1, with_epoch: bool = False):
        self.size, self.rank, self.world = size, rank, world_size
        self.shuffle, self.seed, self.batch_size = shuffle, seed, batch_size
        self.with_epoch = with_epoch
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        keep = len(order) // (self.world * self.batch_size) * self.world * self.batch_size
        return order[:keep][self.rank::self.world]

    def __iter__(self):
        indices = self._indices()[self.start:]
        return iter([(i, self.epoch) for i in indices] if self.with_epoch else indices)

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start, 0)
