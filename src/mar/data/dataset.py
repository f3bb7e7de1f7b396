"""The video dataset: list records in, training clips or test views out, robust to bad files.

A file that cannot be opened or decoded never stops an epoch. In training the sample is
replaced by another video (a bounded number of tries, each drawn from the sample's own
generator), and every item lists the files it had to skip, so the epoch summary can
count them across DataLoader workers; each process warns once per file. In testing
(:class:`VideoViews`) the video's views come back marked ``valid=False`` with the reason,
so evaluation and prediction leave them out and report them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from .decode import DecodeError, VideoBytes, make_backend
from .lists import VideoRecord
from .sampling import SegmentTestStyle, dense_indices, multi_views, segment_indices
from .transforms import EvalTransform, TrainTransform


@dataclass(frozen=True)
class ClipSampling:
    """Temporal sampling: ``dense`` (Kinetics: ``num_frames`` at ``stride``) or ``segment``
    (Something-Something: one frame per segment)."""

    mode: str = "dense"
    num_frames: int = 16
    stride: int = 4
    segment_test_style: SegmentTestStyle = "centre"

    def indices(self, total: int, *, train: bool, clip: int = 0, num_clips: int = 1,
                generator=None) -> list[int]:
        if self.mode == "dense":
            return dense_indices(total, self.num_frames, self.stride, train=train, clip=clip,
                                 num_clips=num_clips, generator=generator)
        if self.mode == "segment":
            return segment_indices(total, self.num_frames, train=train, clip=clip,
                                   num_clips=num_clips, style=self.segment_test_style,
                                   generator=generator)
        raise ValueError(f"unknown sampling mode {self.mode!r}; known: dense, segment")


@dataclass(frozen=True)
class Sample:
    """One video to decode: a file (``source`` its path) or a shard member (its bytes),
    its ``label``, its ``index`` (the number its random draws are seeded by and items
    carry) and its ``name`` (warnings and ``skipped``). ``error``: why it cannot be used
    (a shard member without a label); decoding it raises that as a :class:`DecodeError`."""

    source: str | VideoBytes
    label: int
    index: int
    name: str
    error: str | None = None


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of video ``index`` in ``epoch``: every random draw of its item."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class ClipMaker:
    """The training item of one video, wherever it is held (:class:`VideoDataset`: a
    file; :class:`mar.data.sharded.ShardedVideos`: a shard member): decoded once (a bad
    video replaced by another, drawn with the item's own generator, at most
    ``max_retries`` times), augmented ``repeats`` times."""

    def __init__(self, sampling: ClipSampling, transform: TrainTransform, repeats: int = 1,
                 backend: str = "pyav", decode_timeout: float = 30.0, max_retries: int = 10):
        self.sampling, self.transform, self.repeats = sampling, transform, repeats
        self.backend_name, self.decode_timeout = backend, decode_timeout
        self.max_retries = max_retries
        self._backend = None
        self._warned: set[str] = set()

    @property
    def backend(self):
        if self._backend is None:  # built lazily, in the worker that uses it
            self._backend = make_backend(self.backend_name, self.decode_timeout)
        return self._backend

    def warn(self, name: str, error: Exception) -> None:
        """Once per video and process."""
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"skipping unreadable video: {error}", stacklevel=3)

    def frames(self, sample: Sample, generator: torch.Generator) -> np.ndarray:
        """A training clip's frames, (T, H, W, 3) uint8."""
        if sample.error:
            raise DecodeError(f"{sample.name}: {sample.error}")
        info = self.backend.probe(sample.source)
        if info.num_frames == 0:
            raise DecodeError(f"{sample.name}: no video frames")
        indices = self.sampling.indices(info.num_frames, train=True, generator=generator)
        return self.backend.read(sample.source, indices, info)

    def item(self, sample: Sample, generator: torch.Generator,
             replace: Callable[[torch.Generator], Sample], frames=None) -> dict[str, Any]:
        """``sample``'s item; ``replace(generator)`` draws the video that stands in for a
        bad one; ``frames``: a decoder other than :meth:`frames` (a cache)."""
        frames = frames or self.frames
        skipped = []
        for _ in range(self.max_retries + 1):
            try:
                video = frames(sample, generator)
                break
            except DecodeError as e:
                self.warn(sample.name, e)
                skipped.append(sample.name)
                sample = replace(generator)
        else:
            hint = "" if isinstance(sample.source, VideoBytes) else "; is the data root right?"
            raise DecodeError(f"{self.max_retries + 1} videos in a row could not be decoded "
                              f"(last: {skipped[-1]}){hint}")
        clips, labels, erases = [], [], []
        for _ in range(self.repeats):
            clip, label, erase = self.transform.augment(video, sample.label, generator)
            clips.append(clip)
            labels.append(label)
            erases.append(erase)
        if self.repeats > 1:
            video, label, erase = torch.stack(clips), torch.tensor(labels), torch.stack(erases)
        else:
            video, label, erase = clips[0], labels[0], erases[0]
        return {"video": video, "erase": erase, "label": label, "index": sample.index,
                "valid": True, "skipped": skipped}


class VideoDataset(Dataset):
    """Training clips from a list of videos: item i is video i, decoded once, augmented
    ``repeats`` times (repeated augmentation; official K400: 2); ``video`` is
    uint8 (C, T, H, W), or (repeats, C, T, H, W) when ``repeats > 1``, with ``erase``, its
    erasing draws: the training step finishes them (:func:`mar.data.transforms.finish`;
    :class:`ClipMaker`).
    Test views come from :class:`VideoViews`.

    Randomness: item i in epoch e draws from a generator seeded by (seed, e, i)
    (:func:`sample_generator`), so a run is reproducible whatever the worker count. The
    epoch comes with the index (item ``(i, e)``, what the training sampler yields, so
    persistent workers need no message) or from :meth:`set_epoch` (item ``i``).

    ``cache=True`` keeps every decoded video in memory (all its frames, decoded once): for
    small datasets such as the synthetic benchmark, where decoding dominates. Each
    DataLoader worker holds its own cache, so use it with ``num_workers=0`` or persistent
    workers.
    """

    def __init__(self, records: list[VideoRecord], *,
                 sampling: ClipSampling = ClipSampling(),
                 train_transform: TrainTransform | None = None, repeats: int = 1,
                 backend: str = "pyav", decode_timeout: float = 30.0,
                 max_retries: int = 10, seed: int = 0, cache: bool = False):
        if not records:
            raise ValueError("dataset: no videos")
        self.records = list(records)
        self.clips = ClipMaker(sampling, train_transform or TrainTransform(), repeats,
                               backend, decode_timeout, max_retries)
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        self._decoded: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    @property
    def backend(self):
        return self.clips.backend

    def _sample(self, index: int) -> Sample:
        record = self.records[index]
        return Sample(record.path, record.label, index, record.path)

    def _replace(self, generator: torch.Generator) -> Sample:
        return self._sample(int(torch.randint(0, len(self.records), (1,), generator=generator)))

    def _cached(self, sample: Sample, generator: torch.Generator) -> np.ndarray:
        if sample.index not in self._decoded:
            info = self.backend.probe(sample.source)
            if info.num_frames == 0:
                raise DecodeError(f"{sample.name}: no video frames")
            self._decoded[sample.index] = self.backend.read(sample.source,
                                                            range(info.num_frames), info)
        frames = self._decoded[sample.index]
        return frames[self.clips.sampling.indices(len(frames), train=True,
                                                  generator=generator)]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        return self.clips.item(self._sample(index), sample_generator(self.seed, epoch, index),
                               self._replace, self._cached if self.cache else None)


class ViewMaker:
    """Every test view of one video, wherever it is held (a file, a shard member):
    ``num_clips x num_crops`` views stacked, (V, C, T, S, S), clip-major. The one way
    test views are made (:class:`VideoViews`, :class:`mar.data.sharded.ShardedViews`).

    The video is probed once and the frames of all its clips are decoded in one pass,
    scaled by the decoder to the transform's short side: no full-size frames, no decoding
    the same clip once per crop. A video that cannot be decoded (or whose decoding raises
    anything else) comes back with ``valid=False`` and its error, never an exception.
    ``timing`` holds the seconds spent opening/probing, decoding and transforming."""

    def __init__(self, sampling: ClipSampling, eval_transform: EvalTransform,
                 num_clips: int = 1, backend: str = "pyav", decode_timeout: float = 30.0):
        self.sampling, self.transform = sampling, eval_transform
        self.views = multi_views(num_clips, eval_transform.num_crops)
        self.num_clips = num_clips
        self.backend_name, self.decode_timeout = backend, decode_timeout
        self._backend = None

    def __call__(self, sample: Sample) -> dict[str, Any]:
        if self._backend is None:  # built lazily, in the worker that uses it
            self._backend = make_backend(self.backend_name, self.decode_timeout)
        short = self.transform.short_side or self.transform.crop_size
        timing = {"open": 0.0, "decode": 0.0, "transform": 0.0}
        item = {"index": sample.index, "label": sample.label, "valid": True, "error": None,
                "timing": timing, "num_views": len(self.views),
                "clip": torch.tensor([v.clip for v in self.views]),
                "crop": torch.tensor([v.crop for v in self.views])}
        try:
            if sample.error:
                raise DecodeError(f"{sample.name}: {sample.error}")
            start = time.perf_counter()
            info = self._backend.probe(sample.source)
            if info.num_frames == 0:
                raise DecodeError(f"{sample.name}: no video frames")
            clips = [self.sampling.indices(info.num_frames, train=False, clip=c,
                                           num_clips=self.num_clips)
                     for c in range(self.num_clips)]
            wanted = sorted({i for clip in clips for i in clip})
            timing["open"] = time.perf_counter() - start
            start = time.perf_counter()
            frames = self._backend.read(sample.source, wanted, info, short_side=short)
            timing["decode"] = time.perf_counter() - start
        except Exception as e:  # a bad file must not stop an evaluation or a prediction
            size = self.transform.crop_size
            error = str(e) if isinstance(e, DecodeError) else \
                f"{sample.name}: {type(e).__name__}: {e}"
            item.update(video=torch.zeros(len(self.views), 3, self.sampling.num_frames, size,
                                          size), valid=False, error=error)
            return item
        start = time.perf_counter()
        row = {f: k for k, f in enumerate(wanted)}
        item["video"] = torch.stack([
            self.transform(frames[[row[f] for f in clips[v.clip]]], v.crop)
            for v in self.views])
        timing["transform"] = time.perf_counter() - start
        return item


class VideoViews(Dataset):
    """Every test view of one video per item (:class:`ViewMaker`): item i is video i's
    ``num_clips x num_crops`` views stacked, (V, C, T, S, S), clip-major. Evaluation,
    prediction, serving, extraction and pictures all read them here."""

    def __init__(self, records: list[VideoRecord], *, sampling: ClipSampling,
                 eval_transform: EvalTransform, num_clips: int = 1, backend: str = "pyav",
                 decode_timeout: float = 30.0):
        self.records = list(records)
        self.make = ViewMaker(sampling, eval_transform, num_clips, backend, decode_timeout)
        self.views = self.make.views

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return self.make(Sample(record.path, record.label, index, record.path))


def collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The views of several videos as one batch: ``video`` (sum V, C, T, S, S) and, per
    view, the video's ``index``, ``label`` and ``valid``, and the view's ``clip`` and
    ``crop``; ``error`` maps a failed video's index to its reason."""
    def per_view(key: str) -> Tensor:
        return torch.tensor([it[key] for it in items for _ in range(it["num_views"])])

    return {"video": torch.cat([it["video"] for it in items]),
            "index": per_view("index"), "label": per_view("label"),
            "valid": per_view("valid"),
            "clip": torch.cat([it["clip"] for it in items]),
            "crop": torch.cat([it["crop"] for it in items]),
            "error": {it["index"]: it["error"] for it in items if it["error"]},
            "timing": [it["timing"] for it in items]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a training batch; repeated clips are flattened into the batch (B * repeats,
    ...). ``video`` is uint8 and ``erase`` its clips' erasing draws: the training step
    finishes them (:func:`mar.data.transforms.finish`). In a loader worker the clips are
    stacked straight into shared memory (torch's ``default_collate``), the one copy their
    way to the main process."""
    video = default_collate([it["video"] for it in items])
    erase = torch.stack([it["erase"] for it in items])
    label = torch.stack([torch.as_tensor(it["label"]) for it in items])
    index = torch.tensor([it["index"] for it in items])
    valid = torch.tensor([it["valid"] for it in items])
    if video.dim() == 6:  # (B, R, C, T, H, W)
        r = video.shape[1]
        video, erase, label = video.flatten(0, 1), erase.flatten(0, 1), label.flatten()
        index, valid = index.repeat_interleave(r), valid.repeat_interleave(r)
    return {"video": video, "erase": erase, "label": label, "index": index, "valid": valid,
            "skipped": [p for it in items for p in it["skipped"]]}


def view_loader(views, views_per_call: int, *, workers: int = 0, sampler=None,
                pin_memory: bool = False,
                persistent: bool = False) -> torch.utils.data.DataLoader:
    """Batches of whole videos' test views (:func:`collate_views`): as many videos as fill
    ``views_per_call`` views (at least one), in ``workers`` processes (kept between
    passes with ``persistent``); ``sampler``: this process's share of the videos
    (default: all, in order); ``pin_memory`` on a GPU, for ``non_blocking`` copies."""
    persistent = persistent and workers > 0
    # a persistent loader draws its workers' seed once, at its first pass: from its own
    # generator, so that a training run that evaluates with it consumes the global RNG
    # (dropout's) the same whether or not it was resumed in between
    return torch.utils.data.DataLoader(views, max(1, views_per_call // len(views.views)),
                                       sampler=sampler, collate_fn=collate_views,
                                       num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=persistent,
                                       generator=torch.Generator() if persistent else None)
