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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .decode import DecodeError, make_backend
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


class VideoDataset(Dataset):
    """Training clips from a list of videos: item i is video i, decoded once, augmented
    ``repeats`` times (repeated augmentation; official K400: 2); ``video`` is
    (C, T, H, W), or (repeats, C, T, H, W) when ``repeats > 1``. Test views come from
    :class:`VideoViews`.

    Randomness: item i in epoch e draws from a generator seeded by (seed, e, i), so a
    run is reproducible whatever the worker count. The epoch comes with the index (item
    ``(i, e)``, what the training sampler yields, so persistent workers need no message)
    or from :meth:`set_epoch` (item ``i``).

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
        self.sampling = sampling
        self.train_transform = train_transform or TrainTransform()
        self.repeats = repeats
        self.backend_name = backend
        self.decode_timeout = decode_timeout
        self.max_retries = max_retries
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        self._decoded: dict[int, np.ndarray] = {}
        self._backend = None
        self._warned: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    @property
    def backend(self):
        if self._backend is None:  # built lazily, in the worker that uses it
            self._backend = make_backend(self.backend_name, self.decode_timeout)
        return self._backend

    def _generator(self, index: int, epoch: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def _warn(self, path: str, error: Exception) -> None:
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"skipping unreadable video: {error}", stacklevel=3)

    def _decode(self, record: VideoRecord, generator: torch.Generator) -> np.ndarray:
        key = id(record)
        if self.cache and key in self._decoded:
            frames = self._decoded[key]
            indices = self.sampling.indices(len(frames), train=True, generator=generator)
            return frames[indices]
        info = self.backend.probe(record.path)
        if info.num_frames == 0:
            raise DecodeError(f"{record.path}: no video frames")
        if self.cache:
            self._decoded[key] = self.backend.read(record.path, range(info.num_frames), info)
            return self._decode(record, generator)
        indices = self.sampling.indices(info.num_frames, train=True, generator=generator)
        return self.backend.read(record.path, indices, info)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        generator = self._generator(index, epoch)
        skipped = []
        video_index = index
        for _ in range(self.max_retries + 1):
            record = self.records[video_index]
            try:
                frames = self._decode(record, generator)
                break
            except DecodeError as e:
                self._warn(record.path, e)
                skipped.append(record.path)
                video_index = int(torch.randint(0, len(self.records), (1,), generator=generator))
        else:
            raise DecodeError(f"{self.max_retries + 1} videos in a row could not be decoded "
                              f"(last: {record.path}); is the data root right?")
        clips, labels = [], []
        for _ in range(self.repeats):
            clip, label = self.train_transform(frames, record.label, generator)
            clips.append(clip)
            labels.append(label)
        video = torch.stack(clips) if self.repeats > 1 else clips[0]
        label = torch.tensor(labels) if self.repeats > 1 else labels[0]
        return {"video": video, "label": label, "index": video_index, "valid": True,
                "skipped": skipped}


class VideoViews(Dataset):
    """Every test view of one video per item: item i is video i's ``num_clips x
    num_crops`` views stacked, (V, C, T, S, S), clip-major. The one way test views are
    made: evaluation, prediction, serving, extraction and pictures all read them here.

    The video is probed once and the frames of all its clips are decoded in one pass,
    scaled by the decoder to the transform's short side: no full-size frames, no decoding
    the same clip once per crop. A video that cannot be decoded (or whose decoding raises
    anything else) comes back with ``valid=False`` and its error, never an exception.
    ``timing`` holds the seconds spent opening/probing, decoding and transforming."""

    def __init__(self, records: list[VideoRecord], *, sampling: ClipSampling,
                 eval_transform: EvalTransform, num_clips: int = 1, backend: str = "pyav",
                 decode_timeout: float = 30.0):
        self.records = list(records)
        self.sampling, self.transform = sampling, eval_transform
        self.views = multi_views(num_clips, eval_transform.num_crops)
        self.num_clips = num_clips
        self.backend_name, self.decode_timeout = backend, decode_timeout
        self._backend = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._backend is None:  # built lazily, in the worker that uses it
            self._backend = make_backend(self.backend_name, self.decode_timeout)
        record = self.records[index]
        short = self.transform.short_side or self.transform.crop_size
        timing = {"open": 0.0, "decode": 0.0, "transform": 0.0}
        item = {"index": index, "label": record.label, "valid": True, "error": None,
                "timing": timing, "num_views": len(self.views),
                "clip": torch.tensor([v.clip for v in self.views]),
                "crop": torch.tensor([v.crop for v in self.views])}
        try:
            start = time.perf_counter()
            info = self._backend.probe(record.path)
            if info.num_frames == 0:
                raise DecodeError(f"{record.path}: no video frames")
            clips = [self.sampling.indices(info.num_frames, train=False, clip=c,
                                           num_clips=self.num_clips)
                     for c in range(self.num_clips)]
            wanted = sorted({i for clip in clips for i in clip})
            timing["open"] = time.perf_counter() - start
            start = time.perf_counter()
            frames = self._backend.read(record.path, wanted, info, short_side=short)
            timing["decode"] = time.perf_counter() - start
        except Exception as e:  # a bad file must not stop an evaluation or a prediction
            size = self.transform.crop_size
            error = str(e) if isinstance(e, DecodeError) else \
                f"{record.path}: {type(e).__name__}: {e}"
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
    """Stack a training batch; repeated clips are flattened into the batch (B * repeats, ...)."""
    video = torch.stack([it["video"] for it in items])
    label = torch.stack([torch.as_tensor(it["label"]) for it in items])
    index = torch.tensor([it["index"] for it in items])
    valid = torch.tensor([it["valid"] for it in items])
    if video.dim() == 6:  # (B, R, C, T, H, W)
        r = video.shape[1]
        video, label = video.flatten(0, 1), label.flatten()
        index, valid = index.repeat_interleave(r), valid.repeat_interleave(r)
    return {"video": video, "label": label, "index": index, "valid": valid,
            "skipped": [p for it in items for p in it["skipped"]]}


def view_loader(views: VideoViews, views_per_call: int, *, workers: int = 0, sampler=None,
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
