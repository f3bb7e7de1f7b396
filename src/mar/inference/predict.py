"""``mar predict``: top-k classes of video files, each video's test views scored at once."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..config import Config
from ..data.prepare import VIDEO_EXTENSIONS
from ..masking import MaskingStrategy
from ..models import MAR
from ..runtime.device import default_views_per_call, model_device
from .score import score


def find_videos(items: list[str]) -> list[Path]:
    """Video files named directly, and every video inside the named folders (sorted)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"no video files in {', '.join(items)}")
    return out


@dataclass
class Prediction:
    path: str
    classes: list[int]
    probs: list[float]
    views: int
    error: str | None = None


@dataclass
class Profile:
    """Seconds per stage of :func:`predict`. ``open``, ``decode`` and ``transform`` are
    summed over videos (in the loader workers, so they overlap the model when
    ``workers > 0``); ``model`` and ``wall`` are the main process's."""

    open: float = 0.0
    decode: float = 0.0
    transform: float = 0.0
    model: float = 0.0
    wall: float = 0.0
    videos: int = 0
    views: int = 0

    def add(self, timing: dict) -> None:
        for key in ("open", "decode", "transform"):
            setattr(self, key, getattr(self, key) + timing[key])


def default_workers(videos: int) -> int:
    """Loader workers that overlap decoding with the model: none for one video (a
    worker's start-up would cost more), else up to 4 and one per spare core."""
    return 0 if videos <= 1 else max(1, min(4, (os.cpu_count() or 2) - 1))


def predict(model: MAR, cfg: Config, videos: list[Path], masking: MaskingStrategy,
            topk: int = 5, *, amp: str | None = None, views_per_call: int | None = None,
            workers: int | None = None, profile: Profile | None = None) -> list[Prediction]:
    """Softmax averaged over the config's test views (clips x crops) of each video.

    The views are :meth:`mar.config.Config.views_dataset`'s (each video decoded once,
    scaled by the decoder); ``workers`` loader processes decode the next videos while
    :func:`mar.inference.score` runs the model on the views of one or more videos, in
    calls of at most ``views_per_call`` views, under autocast ``amp``."""
    from ..data import VideoRecord, view_loader

    start = time.perf_counter()
    dc = cfg.data
    device = model_device(model)
    views_per_call = views_per_call or default_views_per_call(device)
    dataset = cfg.views_dataset([VideoRecord(str(v), 0) for v in videos], dc.test_clips,
                                dc.test_crops)
    workers = default_workers(len(videos)) if workers is None else workers
    probs: dict[int, Tensor] = {}
    errors: dict[int, str] = {}
    views: dict[int, int] = {}
    for batch in view_loader(dataset, views_per_call, workers=workers,
                             pin_memory=device.type == "cuda"):
        errors |= batch["error"]
        tick = time.perf_counter()
        p = score(model, batch["video"], masking, amp=amp, views_per_call=views_per_call)
        if profile is not None:
            profile.model += time.perf_counter() - tick
            for timing in batch["timing"]:
                profile.add(timing)
        for i in batch["index"][batch["valid"]].unique().tolist():
            rows = batch["index"] == i
            probs[i], views[i] = p[rows].mean(0), int(rows.sum())
    out = []
    for i, v in enumerate(videos):
        if i not in probs:
            out.append(Prediction(str(v), [], [], 0, errors.get(i, "could not be decoded")))
            continue
        top = probs[i].topk(min(topk, cfg.model.num_classes))
        out.append(Prediction(str(v), top.indices.tolist(), top.values.tolist(), views[i]))
    if profile is not None:
        profile.wall += time.perf_counter() - start
        profile.videos += len(videos)
        profile.views += sum(views.values())
    return out
