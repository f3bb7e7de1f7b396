"""Which frames a clip takes (temporal sampling) and where test crops sit (spatial views).

Pure functions of the true frame count; random choices take a ``torch.Generator``.
Indices past the end of a short video are clamped, i.e. the last frame repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Sampling = Literal["dense", "segment"]
SegmentTestStyle = Literal["centre", "videomae", "mar"]


def _clamp(indices: list[int], num_frames: int) -> list[int]:
    return [min(max(i, 0), num_frames - 1) for i in indices]


def _randint(high: int, generator) -> int:
    """Uniform in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=generator)) if high > 0 else 0


def dense_indices(num_frames: int, length: int, stride: int, *, train: bool,
                  clip: int = 0, num_clips: int = 1, generator=None) -> list[int]:
    """Kinetics-style: ``length`` frames ``stride`` apart (official K400: 16 at stride 4).

    Training starts at a random frame; test clip ``clip`` of ``num_clips`` starts at
    ``clip * (n - span) / (num_clips - 1)`` (evenly from first to last), a single test
    clip in the middle.
    """
    span = (length - 1) * stride + 1
    room = max(num_frames - span, 0)
    if train:
        start = _randint(room, generator)
    elif num_clips > 1:
        start = round(clip * room / (num_clips - 1))
    else:
        start = room // 2
    return _clamp([start + i * stride for i in range(length)], num_frames)


def segment_indices(num_frames: int, length: int, *, train: bool, clip: int = 0,
                    num_clips: int = 1, style: SegmentTestStyle = "centre",
                    generator=None) -> list[int]:
    """Something-Something-style (TSN): one frame in each of ``length`` equal segments.

    Training: a random frame per segment. Test clip ``clip`` of ``num_clips`` takes the
    same relative offset in every segment: ``"centre"`` (k + 0.5) / K (one clip: the
    centres), ``"videomae"`` k / K (two clips: starts and centres), ``"mar"`` k / (K - 1)
    (two clips: left and right boundaries, as the official MAR code).
    """
    seg = num_frames / length
    if train:
        return _clamp([int(seg * i) + _randint(max(int(seg * (i + 1)) - int(seg * i) - 1, 0),
                                               generator) for i in range(length)], num_frames)
    if style == "centre":
        offset = (clip + 0.5) / num_clips
    elif style == "videomae":
        offset = clip / num_clips
    elif style == "mar":
        offset = clip / (num_clips - 1) if num_clips > 1 else 0.5
    else:
        raise ValueError(f"unknown segment test style {style!r}")
    # the right boundary of a segment is its last frame, not the next segment's first
    return _clamp([min(int(seg * (i + offset)), int(seg * (i + 1)) - (offset >= 1))
                   for i in range(length)], num_frames)


def crop_offsets(size: int, crop: int, num_crops: int) -> list[int]:
    """Where ``num_crops`` crops of ``crop`` pixels sit along a side of ``size``: evenly
    from start to end (3 crops: start, middle, end), one crop in the centre."""
    room = max(size - crop, 0)
    if num_crops == 1:
        return [room // 2]
    return [int(k * room / (num_crops - 1)) for k in range(num_crops)]


@dataclass(frozen=True)
class View:
    """One test view of a video: temporal clip ``clip``, spatial crop ``crop``."""

    clip: int
    crop: int


def multi_views(num_clips: int, num_crops: int) -> list[View]:
    """All (clip, crop) views, clip-major (defaults: K400 5 x 3, SSv2 2 x 3)."""
    return [View(c, k) for c in range(num_clips) for k in range(num_crops)]
