"""Datasets over tar shards (:mod:`mar.data.shards`): training clips and test views,
streamed shard by shard, with the items of :class:`~mar.data.dataset.VideoDataset` and
:class:`~mar.data.dataset.VideoViews` (the same :class:`ClipMaker` and :class:`ViewMaker`).

Training (:class:`ShardedVideos`) reads ``S = processes x loader workers`` streams; stream
``s = rank x W + worker`` reads shards ``perm[s::S]`` of epoch e's shard permutation
(seeded by (seed, e)) in order, through a shuffle buffer drawn by a generator seeded by
(seed, e, s), and yields exactly ``K = floor(samples / (S x batch)) x batch`` samples,
cycling through its shards if they hold fewer. So every process runs the same number of
full batches, the DataLoader hands them out round-robin over its workers (batch j from
worker j mod W), and a run is exactly reproducible for a given number of processes and
workers. A resumed epoch re-reads the streams up to where they were, without decoding.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .dataset import ClipMaker, ClipSampling, Sample, ViewMaker, sample_generator
from .decode import DecodeError, VideoBytes
from .shards import LABEL, META, ShardError, ShardReadError, ShardSet, read_shard
from .transforms import EvalTransform, TrainTransform


def _worker() -> tuple[int, int]:
    """(this DataLoader worker, the loader's workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def member_sample(shards: ShardSet, shard: int, position: int, key: str,
                  members: dict[str, bytes]) -> Sample:
    """The ``position``-th sample of shard ``shard``: its video's bytes, its label (from
    ``.cls``) and its global number (the shard's offset plus the position). A sample
    without a video, a ``.cls`` or a ``.json`` member, or with a label that is not a
    non-negative integer, carries an ``error`` instead (skipped as a bad video)."""
    videos = sorted(e for e in members if e not in (LABEL, META))
    name = f"{shards.names[shard]}:{key}" + (f".{videos[0]}" if videos else "")
    error, label = None, -1
    if not videos:
        error = "no video member"
    elif LABEL not in members or META not in members:
        error = f"no .{LABEL if LABEL not in members else META} member"
    else:
        text = members[LABEL].decode(errors="replace").strip()
        try:
            label = int(text)
            json.loads(members[META])
        except ValueError:
            error = (f"label {text[:20]!r} is not an integer" if label < 0 else
                     f"its .{META} is not JSON")
        if label < 0 and error is None:
            error = f"negative label {label}"
    source = VideoBytes(members[videos[0]] if videos else b"", name)
    return Sample(source, label, shards.offsets[shard] + position, name, error)


class ShardReader:
    """The samples of shards, one shard at a time (at most as many as the index says).
    A shard that cannot be read to its end, or holds fewer samples than its index says,
    is warned about once per process and named in :attr:`notes` (``shard-000003.tar``
    or ``shard-000003.tar:000123.mp4``), which the training items list in ``skipped``."""

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.notes: list[str] = []
        self._warned: set[str] = set()

    def samples(self, shard: int) -> Iterator[Sample]:
        name, count, n = self.shards.names[shard], self.shards.samples[shard], 0
        try:
            for key, members in read_shard(self.shards.urls[shard]):
                if n == count:
                    break
                yield member_sample(self.shards, shard, n, key, members)
                n += 1
        except ShardReadError as e:
            self._note(f"{name}:{e.member}" if e.member else name, str(e))
            return
        if n < count:
            self._note(name, f"{name}: {n} of its {count} samples (it ends early)")

    def _note(self, name: str, message: str) -> None:
        self.notes.append(name)
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"skipping the rest of a shard: {message}", stacklevel=3)


class ShardedVideos(IterableDataset):
    """Training clips from shards (see the module's docstring for the streams). Made by
    :meth:`mar.config.Config.dataset`; :meth:`for_rank` places it on a process with its
    loader's workers and batch size, :meth:`set_epoch` (before each ``iter``: workers are
    not persistent) sets the epoch and the samples this process already had of it.

    A bad sample (not a video, no label) keeps its slot: the slot decodes another sample
    drawn with the slot's own generator from the shuffle buffer (:class:`ClipMaker`),
    so the stream never shifts and a resumed epoch sees the same samples."""

    def __init__(self, shards: ShardSet, *, sampling: ClipSampling,
                 train_transform: TrainTransform | None = None, repeats: int = 1,
                 backend: str = "pyav", decode_timeout: float = 30.0, max_retries: int = 10,
                 seed: int = 0, shuffle_buffer: int = 100):
        self.shards = shards
        self.clips = ClipMaker(sampling, train_transform or TrainTransform(), repeats,
                               backend, decode_timeout, max_retries)
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank, self.world_size, self.workers, self.batch_size = 0, 1, 1, 1
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.shards.total

    def for_rank(self, rank: int, world_size: int, *, workers: int,
                 batch_size: int) -> ShardedVideos:
        """A copy for process ``rank`` of ``world_size`` whose loader has ``workers``
        workers (0: none) and batches of ``batch_size``."""
        placed = copy.copy(self)
        placed.rank, placed.world_size = rank, world_size
        placed.workers, placed.batch_size = max(1, workers), batch_size
        streams, shards = placed.streams, len(self.shards.urls)
        split = f"{world_size} processes x {placed.workers} loader workers"
        if shards < streams:
            raise ShardError(f"{shards} shards for {streams} streams ({split}): write smaller "
                             "shards (mar data shard --shard-size) or use fewer workers")
        if placed.per_stream == 0:
            raise ShardError(f"{self.shards.total} samples make no batch of {batch_size} for "
                             f"each of {streams} streams ({split})")
        return placed

    @property
    def streams(self) -> int:
        return self.world_size * self.workers

    @property
    def per_stream(self) -> int:
        """K: the samples each stream yields per epoch, a multiple of the batch size."""
        return self.shards.total // (self.streams * self.batch_size) * self.batch_size

    @property
    def videos_per_process(self) -> int:
        return self.per_stream * self.workers

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``, of which this process already had ``start`` samples."""
        self.epoch, self.start = epoch, start

    def stream_shards(self, epoch: int, stream: int) -> list[int]:
        seed = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
        order = torch.randperm(len(self.shards.urls),
                               generator=torch.Generator().manual_seed(int(seed)))
        return order[stream::self.streams].tolist()

    def _inputs(self, epoch: int, stream: int, reader: ShardReader) -> Iterator[Sample]:
        """The stream's samples in order, its shards over and over."""
        order = self.stream_shards(epoch, stream)
        while True:
            found = 0
            for shard in order:
                for sample in reader.samples(shard):
                    found += 1
                    yield sample
            if not found:
                raise DecodeError(f"no sample of {', '.join(self.shards.names[i] for i in order)}"
                                  " can be read")

    def slots(self, epoch: int, stream: int, reader: ShardReader | None = None
              ) -> Iterator[tuple[Sample, list[Sample]]]:
        """The stream's K slots of ``epoch``: each slot's sample, and the samples a bad
        one may be replaced by (the shuffle buffer, and the previous slot's sample). Reads
        the shards, decodes nothing."""
        reader = reader or ShardReader(self.shards)
        seed = np.random.SeedSequence([self.seed, epoch, stream]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        inputs = self._inputs(epoch, stream, reader)
        buffer: list[Sample] = []
        previous = None
        for n in range(self.per_stream):
            # fill the buffer; the stream reads exactly K samples this epoch
            while len(buffer) < self.shuffle_buffer and n + len(buffer) < self.per_stream:
                buffer.append(next(inputs))
            i = int(torch.randint(0, len(buffer), (1,), generator=generator))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            sample = buffer.pop()
            yield sample, buffer + ([previous] if previous is not None else [])
            previous = sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        if workers != self.workers:
            raise RuntimeError(f"ShardedVideos placed for {self.workers} loader workers is "
                               f"read by {workers}: build it with for_rank")
        # on resume, the batches this process had (j) came from the streams in turn; the
        # loader's worker 0 takes the stream of batch j, each stream skips what it gave
        done = self.start // self.batch_size
        local = (worker + done) % workers
        skip = max(0, -(-(done - local) // workers)) * self.batch_size
        stream = self.rank * workers + local
        reader = ShardReader(self.shards)
        for n, (sample, pool) in enumerate(self.slots(self.epoch, stream, reader)):
            if n >= skip:
                pool = pool or [sample]
                item = self.clips.item(
                    sample, sample_generator(self.seed, self.epoch, sample.index),
                    lambda g, pool=pool: pool[int(torch.randint(0, len(pool), (1,),
                                                                generator=g))])
                item["skipped"] = reader.notes + item["skipped"]
                yield item
            reader.notes = []


class ShardedViews(IterableDataset):
    """Every test view of every sample of the shards (:class:`ViewMaker`, as
    :class:`~mar.data.dataset.VideoViews`), each sample exactly once over all processes
    and workers: process r reads shards ``r::world_size``, its worker w every W-th of
    those, in order; no shuffle, no padding. Samples a shard that ends early no longer
    holds come back invalid (``valid=False``), as bad videos do."""

    def __init__(self, shards: ShardSet, *, sampling: ClipSampling,
                 eval_transform: EvalTransform, num_clips: int = 1, backend: str = "pyav",
                 decode_timeout: float = 30.0):
        self.shards = shards
        self.make = ViewMaker(sampling, eval_transform, num_clips, backend, decode_timeout)
        self.views = self.make.views
        self.rank, self.world_size = 0, 1

    def for_rank(self, rank: int, world_size: int) -> ShardedViews:
        placed = copy.copy(self)
        placed.rank, placed.world_size = rank, world_size
        return placed

    def rank_shards(self) -> list[int]:
        return list(range(len(self.shards.urls)))[self.rank::self.world_size]

    def __len__(self) -> int:
        """The samples this process evaluates (from the index)."""
        return sum(self.shards.samples[i] for i in self.rank_shards())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        reader = ShardReader(self.shards)
        for shard in self.rank_shards()[worker::workers]:
            n = 0
            for sample in reader.samples(shard):
                yield self.make(sample)
                n += 1
            name = self.shards.names[shard]
            for position in range(n, self.shards.samples[shard]):
                yield self.make(Sample(VideoBytes(b"", name), -1,
                                       self.shards.offsets[shard] + position,
                                       f"{name}:#{position}", "the shard ends before it"))
