"""Clips/s of the whole training input: ours against VideoMAE's way, what the shipped
levers bought, and the levers not shipped.

What is timed is the training loader as ``mar train`` builds it: the set's shipped config
(``Config.dataset("train")``: decode, temporal sampling, random resized crop, flip,
RandAugment rand-m9-mstd0.5-inc1, the draw of random erasing 0.25, repeated augmentation
2 as the K400 config has; set for every set here) and
:func:`mar.engine.loader.build_loader` (mar's collate, hand-off to the main process), with
as many workers as cores. The workers hand over uint8 clips; the training step
normalises and erases them where the model runs (:func:`mar.data.transforms.finish`): the
``finish`` row times that on one CPU core, its cost without a GPU. A pass is one epoch of
``--clips`` decoded clips, each giving ``--aug-repeats`` augmented clips; rates count
augmented clips (what the model sees), median of ``--repeats`` timed passes after one
warm-up pass (worker start-up, first decodes). Per core = machine / workers (the main
process shares those cores); the ``pinned`` rows run one worker pinned to one core
(``os.sched_setaffinity``, the main process on another), a per-core figure free of that
sharing. Clips per CPU-second (the CPU time of the workers, every thread, and of the main
process, read from /proc) is a per-core rate that other load on the machine moves little.

Sets, written once into ``--work`` with PyAV (textured content: moving, zooming crops of
the photographs of :mod:`mar.data.natural` with a moving second photograph and noise):

* ``kinetics``: H.264 (libx264 medium, crf 23), 454x340, 10 s at 30 fps, a keyframe every
  2, 5 or 10 s; dense sampling, 16 frames at stride 4 (k400_vit_base_mar50).
* ``ssv2``: VP9 (libvpx-vp9) in WebM, 426x240, 3 to 4 s at 12 fps; segment sampling, 16
  frames (ssv2_vit_base_mar50).
* ``real``: the test videos of tests/data/videos, dense sampling (Megamind_bugy.avi is
  left out: its damaged index is a robustness case, not a speed one).

Arms (``--arms``):

* ``mar``: as shipped; ``videomae`` (benchmarks/videomae_loader.py, written from
  VideoMAE's documented behaviour: decord, RandAugment through PIL on full-size frames,
  normalise and erase in the worker, num_sample 2; same files, frame indices, loader and
  collate).
* ``before``: mar before the levers, rebuilt here: the worker normalises (``(x / 255 -
  mean) / std`` broadcast over the permuted float clip), erases (on a copy) and hands over
  float clips; FFmpeg picks its threads in every worker (AUTO); the batch is collated by
  ``torch.stack`` (the hand-off then copies it into shared memory once more); every clip
  probes its file and decodes every frame from the keyframe on (``PyAVBackend`` with
  ``skip_nonref=False, probe_cache=0``).
* The levers, each added alone to ``before`` (all but (a) shipped): (a) ``threads1`` one
  FFmpeg thread per worker (:func:`mar.data.decode.decoder_threads` patched to 1: slower
  than FFmpeg's own choice when measured against the shipped arm, so not shipped); (b)
  ``normalise`` the worker normalises and erases in place (``finish``); (c) ``shm`` the
  batch collated straight into shared memory (``default_collate``); (d) ``uint8`` the
  uint8 hand-off; (g) ``probe`` the probe cached per worker (the timed passes all hit: a
  bound); (h) ``nonref`` unwanted non-reference frames of H.264/HEVC left undecoded
  (FFmpeg's ``skip_frame``, frames found by timestamp; checked against decoding every
  frame on the set's files before it is timed). (b) and (d) overlap: after (d) the worker
  no longer normalises.
* ``uncached``: mar with every clip probing its file, as in a set far larger than the
  probe cache (Kinetics: 240k videos).
* Not shipped, each added to ``mar``: (e) ``resized`` the set re-encoded by ``mar data
  resize --short-side 320``; (f) ``torchcodec`` with ``seek_mode="approximate"``.
* ``pinned``: mar, before and videomae on one pinned worker; ``stages``: ms per stage in
  one process and thread (where the time goes).

The VideoMAE arm needs decord, which mar does not depend on::

    pip install decord          # 0.6.0 has manylinux wheels; else: pip install eva-decord

    python benchmarks/bench_loader.py [--sets kinetics ssv2 real] [--arms mar videomae ...]
        [--clips 12] [--repeats 3] [--json PATH]

The default run takes about 5 minutes on 2 idle cores (the videos, written at the first
run, take a few minutes more); ``--clips 4 --repeats 1 --videos 2`` checks it end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import Tensor

from mar.data import ClipSampling, TrainTransform, VideoRecord, available_backends, collate
from mar.data.decode import PyAVBackend, TorchCodecBackend
from mar.data.transforms import finish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # videomae_loader.py, beside this file
VIDEOS = ROOT / "tests" / "data" / "videos"
SETS = {"kinetics": "k400_vit_base_mar50", "ssv2": "ssv2_vit_base_mar50",
        "real": "k400_vit_base_mar50"}
ARMS = {
    "mar": "mar, as shipped (uint8 hand-off: the workers)",
    "videomae": "VideoMAE way (decord, PIL RandAugment on full frames)",
    "before": "mar before the levers (float hand-off, old normalise, every frame decoded, "
              "every clip probed)",
    "threads1": "(a) before + 1 FFmpeg thread per worker",
    "normalise": "(b) before + in-place normalise and erase",
    "shm": "(c) before + collate straight into shared memory",
    "uint8": "(d) before + uint8 hand-off: the workers",
    "probe": "(g) before + probe cached per worker",
    "nonref": "(h) before + skip unwanted non-reference frames",
    "uncached": "mar, every clip probed (a set far larger than the probe cache)",
    "resized": "(e) mar + re-encoded by `mar data resize` (320p)",
    "torchcodec": "(f) mar + torchcodec seek_mode=approximate",
    "pinned": "1 worker pinned to one core",
    "stages": "ms per stage, one process and thread (after the rest: it imports decord)",
}
MAIN_SIDE = "mar: finish (normalise + erase) on the main process or device"
# the pipeline before the levers, and each lever alone added to it (keywords of ours())
BEFORE = {"worker_finish": "old", "auto_threads": True, "stack": True, "skip_nonref": False,
          "probe_cache": False}
LEVERS = {"threads1": {"auto_threads": False}, "normalise": {"worker_finish": "fast"},
          "shm": {"stack": False}, "uint8": {"worker_finish": ""},
          "probe": {"probe_cache": True}, "nonref": {"skip_nonref": True}}
# the default arms of each set (--arms sets them for all): every lever on kinetics, those
# that can differ elsewhere on the others (nothing to skip in VP9, nor in the real videos:
# MPEG-4 AVI, Cinepak and H.264 without B-frames; one pinned set)
DEFAULT_ARMS = {
    "kinetics": list(ARMS),
    "ssv2": ["mar", "videomae", "before", "threads1", "uint8", "probe", "uncached",
             "resized", "torchcodec", "stages"],
    "real": ["mar", "videomae", "before", "probe", "uncached", "resized", "torchcodec",
             "stages"],
}


# ---------------------------------------------------------------- the video sets

def photo_frames(rng: np.random.Generator, count: int, width: int, height: int,
                 noise: float = 6.0):
    """``count`` uint8 (height, width, 3) frames: a window panning and zooming over one
    photograph, a second photograph moving across it, Gaussian noise of std ``noise``."""
    from PIL import Image

    from mar.data.natural import photographs

    photos = photographs()
    back, front = (Image.fromarray(np.ascontiguousarray(photos[i]))
                   for i in rng.choice(len(photos), 2, replace=False))
    bw, bh = back.size
    zoom, centre = rng.uniform(0.45, 0.9, 2), rng.uniform(0.3, 0.7, (2, 2))
    ow = int(width * rng.uniform(0.2, 0.35))
    oh = int(ow * rng.uniform(0.7, 1.3))
    front = front.resize((ow, oh), Image.Resampling.BILINEAR)
    place = rng.uniform(0, 1, (2, 2))
    for t in range(count):
        a = t / max(count - 1, 1)
        ww = bw * (zoom[0] + (zoom[1] - zoom[0]) * a)
        hh = min(ww * height / width, bh * 0.98)
        ww = hh * width / height
        cx, cy = centre[0] + (centre[1] - centre[0]) * a
        x0 = min(max(cx * bw - ww / 2, 0), bw - ww)
        y0 = min(max(cy * bh - hh / 2, 0), bh - hh)
        im = back.transform((width, height), Image.Transform.EXTENT,
                            (x0, y0, x0 + ww, y0 + hh), Image.Resampling.BILINEAR)
        px, py = place[0] + (place[1] - place[0]) * a
        im.paste(front, (int(px * (width - ow)), int(py * (height - oh))))
        frame = np.asarray(im, dtype=np.int16) + rng.normal(0, noise, (height, width, 3))
        yield np.clip(frame, 0, 255).astype(np.uint8)


def encode(path: Path, frames, codec: str, fmt: str, fps: int, size: tuple[int, int],
           options: dict[str, str]) -> Path:
    """Encode ``frames`` with PyAV, atomically."""
    import av

    from mar.atomic import write_file

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=fps)
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = options
            for frame in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode(None))

    return write_file(path, write)


def kinetics_videos(work: Path, count: int, seconds: float) -> list[Path]:
    """H.264 454x340 at 30 fps, a keyframe every 2, 5 or 10 s (x264 medium, crf 23)."""
    out = []
    for k in range(count):
        gop = (2, 5, 10)[k % 3] * 30
        path = work / f"kinetics_{k}_{seconds:g}s_key{gop}.mp4"
        if not path.is_file():
            n = round(seconds * 30)
            encode(path, photo_frames(np.random.default_rng(k), n, 454, 340), "libx264",
                   "mp4", 30, (454, 340),
                   {"crf": "23", "preset": "medium",
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"})
        out.append(path)
    return out


def ssv2_videos(work: Path, count: int, seconds: float | None) -> list[Path]:
    """VP9 in WebM, 426x240 at 12 fps, 3, 3.5 or 4 s (libvpx-vp9 crf 32, cpu-used 4)."""
    import av

    if "libvpx-vp9" not in av.codecs_available:
        raise SystemExit("this PyAV's FFmpeg has no libvpx-vp9 encoder: the ssv2 set "
                         "cannot be made here")
    out = []
    for k in range(count):
        length = seconds or (3.0, 3.5, 4.0)[k % 3]
        path = work / f"ssv2_{k}_{length:g}s.webm"
        if not path.is_file():
            n = round(length * 12)
            encode(path, photo_frames(np.random.default_rng(100 + k), n, 426, 240),
                   "libvpx-vp9", "webm", 12, (426, 240),
                   {"crf": "32", "b": "0", "deadline": "good", "cpu-used": "4"})
        out.append(path)
    return out


def set_videos(name: str, work: Path, count: int, seconds: float | None) -> list[Path]:
    (work / "videos").mkdir(parents=True, exist_ok=True)
    if name == "kinetics":
        return kinetics_videos(work / "videos", count, seconds or 10.0)
    if name == "ssv2":
        return ssv2_videos(work / "videos", count, seconds)
    real = sorted(p for p in VIDEOS.glob("*") if p.suffix in (".mp4", ".avi")
                  and "bugy" not in p.name)
    return real[:count]


def cycled(paths: list[Path], clips: int) -> list[VideoRecord]:
    """``clips`` records going round ``paths`` (a pass decodes each about equally)."""
    return [VideoRecord(str(paths[i % len(paths)]), i % len(paths)) for i in range(clips)]


# ---------------------------------------------------------------- the variants

def old_finish(clip: Tensor, draw: Tensor, mean, std) -> Tensor:
    """What a worker did after RandAugment before the levers: uint8 (3, T, S, S) and its
    erasing draw -> float (3, T, S, S), ``(x / 255 - mean) / std`` broadcast over the
    permuted float clip (four passes, three new tensors), the box erased on a copy. The
    clip comes permuted from :meth:`TrainTransform.augment` and is put back first: two
    uint8 copies (under 1 ms) that the old worker did not make."""
    video = clip.permute(1, 0, 2, 3).contiguous()  # (T, 3, S, S), as the old worker had it
    x = video.float().div_(255).permute(1, 0, 2, 3)
    x = (x - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
    top, left, h, w, seed = draw.tolist()
    if h > 0:
        x = x.clone()
        g = torch.Generator().manual_seed(seed)
        x[:, :, top:top + h, left:left + w] = torch.randn(x.shape[0], x.shape[1], h, w,
                                                          generator=g)
    return x


@dataclass
class FloatHandOff(TrainTransform):
    """:class:`TrainTransform` whose worker also normalises and erases: float (3, T, S, S)
    leaves it, with an empty erasing draw. ``old``: :func:`old_finish` (before the
    levers); else the shipped :func:`mar.data.transforms.finish`."""

    old: bool = True

    def augment(self, frames: np.ndarray, label: int, generator):
        clip, label, draw = super().augment(frames, label, generator)
        if self.old:
            clip = old_finish(clip, draw, self.mean, self.std)
        else:
            clip = finish(clip[None], draw[None], self.mean, self.std)[0]
        return clip, label, torch.zeros_like(draw)  # erased already


def stacked_collate(items: list[dict]) -> dict:
    """:func:`mar.data.collate` as it was: the video stacked by ``torch.stack``, in a
    worker into its own memory, which the hand-off then copies into shared memory."""
    batch = collate([{**it, "video": it["video"][..., :0]} for it in items])  # the rest
    video = torch.stack([it["video"] for it in items])
    batch["video"] = video.flatten(0, 1) if video.dim() == 6 else video
    return batch


def worker_init(cpu: int | None, auto_threads: bool):
    """A DataLoader ``worker_init_fn``: pin the worker to ``cpu``; without
    ``auto_threads``, one FFmpeg thread (:func:`mar.data.decode.decoder_threads` patched;
    shipped: FFmpeg picks)."""
    def init(worker_id: int) -> None:
        from mar.data import decode

        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if not auto_threads:
            decode.decoder_threads = lambda: 1  # in this worker only
    return init


@contextlib.contextmanager
def pinned_main(cpu: int | None):
    saved = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def check_nonref(paths: list[Path], sampling: ClipSampling, tries: int = 3) -> str:
    """Whether skipping non-reference frames returns the pixels of decoding every frame,
    on each file (tests/test_decode_skip.py checks it on made and real files)."""
    skipping, counting = PyAVBackend(), PyAVBackend(skip_nonref=False)
    generator = torch.Generator().manual_seed(0)
    same = total = counted = 0
    for path in paths:
        info = skipping.probe(path)
        counted += not info.stamps
        for _ in range(tries):
            indices = sampling.indices(info.num_frames, train=True, generator=generator)
            total += 1
            same += np.array_equal(skipping.read(path, indices, info),
                                   counting.read(path, indices, info))
    note = f"; {counted} file(s) counted, nothing skipped (not H.264/HEVC with B-frames, " \
        "or timestamps that do not name frames)" if counted else ""
    return f"nonref: the pixels of decoding every frame on {same} of {total} clips{note}"


class ApproximateTorchCodec(TorchCodecBackend):
    """The shipped torchcodec backend with ``seek_mode="approximate"`` (frames found from
    the header's rate, no index built at open)."""

    def _decoder(self, path):
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(str(path), seek_mode="approximate", dimension_order="NHWC")


# ---------------------------------------------------------------- timing

@dataclass
class Row:
    set: str
    arm: str
    label: str
    workers: int
    rates: list[float]  # augmented clips per second of wall time, one per timed pass
    cpu_rates: list[float] = field(default_factory=list)  # ... per CPU-second
    pinned: bool = False
    main_side: bool = False

    @property
    def machine(self) -> float:
        return statistics.median(self.rates)

    @property
    def per_core(self) -> float:
        return self.machine if self.pinned or self.main_side else \
            self.machine / max(self.workers, 1)

    @property
    def per_cpu_second(self) -> float:
        return statistics.median(self.cpu_rates)


def cpu_seconds() -> float:
    """CPU time (user + system, every thread) of this process and its children: the
    loader's workers. Clips per CPU-second is a per-core rate that other load on the
    machine changes little, unlike clips per second of wall time."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            total += (int(stat[11]) + int(stat[12])) / tick  # utime, stime
    return total


def passes(dataset, workers: int, batch: int, repeats: int, *, collate_fn=collate,
           auto_threads: bool = True, cpu: int | None = None, keep: bool = False):
    """Augmented clips per second of wall time and per CPU-second of ``repeats`` epochs
    after a warm-up one, through the training loader (``collate_fn``, ``auto_threads``:
    variants; ``cpu``: the one worker pinned there); with ``keep``, also the last
    epoch's batches."""
    from mar.engine.loader import build_loader
    from mar.runtime.distributed import DistInfo

    loader = build_loader(dataset, batch, DistInfo(0, 1, 0, torch.device("cpu")),
                          workers=workers)
    # both read when the first epoch's iterator starts the (persistent) workers
    loader.collate_fn, loader.worker_init_fn = collate_fn, worker_init(cpu, auto_threads)
    rates, cpu_rates, kept = [], [], []
    try:
        for epoch in range(repeats + 1):
            loader.set_epoch(epoch)
            kept = []
            start, used, clips = time.perf_counter(), cpu_seconds(), 0
            for b in loader:
                clips += b["video"].shape[0]
                if keep:
                    kept.append(b)
            if epoch:
                rates.append(clips / (time.perf_counter() - start))
                cpu_rates.append(clips / (cpu_seconds() - used))
    finally:
        del loader
        gc.collect()  # persistent workers end with their loader
    return rates, cpu_rates, kept


def time_finish(batches, transform: TrainTransform, repeats: int):
    """Clips per second of wall time and of CPU time of :func:`finish` (what the training
    step does to the uint8 batches) on one thread, ``repeats`` rounds over ``batches``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates, cpu_rates = [], []
    try:
        for _ in range(repeats):
            start, used, clips = time.perf_counter(), time.process_time(), 0
            for b in batches:
                finish(b["video"], b["erase"], transform.mean, transform.std)
                clips += b["video"].shape[0]
            rates.append(clips / (time.perf_counter() - start))
            cpu_rates.append(clips / (time.process_time() - used))
    finally:
        torch.set_num_threads(threads)
    return rates, cpu_rates


def config_for(name: str, list_path: Path, repeats: int):
    from mar.config import load_config

    return load_config(SETS[name], [f"data.train_list={list_path}",
                                    f"data.repeats={repeats}"])


def ours(cfg, backend=None, worker_finish: str = "", auto_threads: bool = True,
         stack: bool = False, skip_nonref: bool = True, probe_cache: bool = True) -> dict:
    """A mar arm, as keywords of :func:`passes`: the config's training dataset and how
    its batches are made (the defaults: as shipped). ``backend``: a variant decoder;
    ``worker_finish`` "old" or "fast": a float hand-off (:class:`FloatHandOff`);
    ``auto_threads``: FFmpeg AUTO threads in the workers; ``stack``:
    :func:`stacked_collate`; ``skip_nonref``, ``probe_cache``: PyAV's decode levers."""
    dataset = cfg.dataset("train")
    maker = dataset.clips  # mar.data.dataset.ClipMaker: the backend and the transform
    if not (skip_nonref and probe_cache):
        backend = PyAVBackend(cfg.data.decode_timeout, skip_nonref=skip_nonref,
                              **({} if probe_cache else {"probe_cache": 0}))
    if backend is not None:
        maker._backend = backend  # built lazily in each worker: set before the fork
    if worker_finish:
        base = maker.transform
        maker.transform = FloatHandOff(
            **{f.name: getattr(base, f.name) for f in fields(base) if f.init},
            old=worker_finish == "old")
    return {"dataset": dataset, "collate_fn": stacked_collate if stack else collate,
            "auto_threads": auto_threads}


def write_records(path: Path, records: list[VideoRecord]) -> Path:
    from mar.data import write_list

    path.parent.mkdir(parents=True, exist_ok=True)
    write_list(records, path)
    return path


def resized_paths(paths: list[Path], work: Path, name: str) -> tuple[list[Path], str]:
    """The files re-encoded by ``mar data resize --short-side 320`` (written once, its
    own resume skips what is done), or [] and why not."""
    mar = [sys.executable, "-m", "mar", "data", "resize"]
    if subprocess.run([*mar, "--help"], capture_output=True).returncode != 0:
        return [], "`mar data resize` does not exist in this checkout"
    from mar.data import read_list

    out = work / "resized" / name
    listed = write_records(work / "lists" / f"{name}_files.csv",
                           [VideoRecord(str(p), i) for i, p in enumerate(paths)])
    root = os.path.commonpath([str(p.parent) for p in paths])
    proc = subprocess.run([*mar, str(listed), "--out", str(out), "--root", root,
                           "--short-side", "320"], capture_output=True, text=True)
    new_list = out / listed.name
    if proc.returncode != 0 or not new_list.is_file():
        return [], f"`mar data resize` failed: {(proc.stdout + proc.stderr).strip()[-300:]}"
    resized = [Path(r.path) for r in read_list(new_list, out)]
    if len(resized) != len(paths):
        return [], f"`mar data resize` converted {len(resized)} of {len(paths)} files"
    return resized, ""


def has_decord() -> bool:
    """Whether decord is installed, without importing it: its wheel bundles its own
    FFmpeg and libvpx, and once loaded in a process, PyAV's libvpx-vp9 encoder fails to
    open there. So only the VideoMAE arm's workers import it (and the main process with
    ``--workers 0``, after every video is written)."""
    import importlib.util

    return importlib.util.find_spec("decord") is not None


def run_set(name: str, paths: list[Path], args, skips: list[str]) -> list[Row]:
    work = Path(args.work)
    records = cycled(paths, args.clips)
    list_path = write_records(work / "lists" / f"{name}.csv", records)
    cfg = config_for(name, list_path, args.aug_repeats)
    sampling = ClipSampling(cfg.data.sampling, cfg.data.num_frames, cfg.data.stride)
    cores = sorted(os.sched_getaffinity(0))
    rows: list[Row] = []

    def timed(arm: str, parts: dict, label: str | None = None, *, pinned: bool = False,
              keep: bool = False):
        workers, start = 1 if pinned else args.workers, time.perf_counter()
        with pinned_main(cores[0] if pinned else None):
            rates, cpu_rates, kept = passes(batch=args.batch, repeats=args.repeats,
                                            workers=workers, keep=keep,
                                            cpu=cores[-1] if pinned else None, **parts)
        rows.append(Row(name, arm, label or ARMS[arm], workers, rates, cpu_rates, pinned))
        print(f"  {name}: {rows[-1].label}: " + ", ".join(f"{r:.2f}" for r in rates)
              + " clips/s; " + ", ".join(f"{r:.2f}" for r in cpu_rates)
              + f" per CPU-s ({time.perf_counter() - start:.0f} s)", flush=True)
        return kept

    def videomae() -> dict:
        from videomae_loader import VideoMAETrainClips

        return {"dataset": VideoMAETrainClips(
            records, sampling, rand_augment=cfg.data.rand_augment, num_sample=args.aug_repeats,
            flip=name != "ssv2", crop_size=cfg.data.crop_size, erase_prob=cfg.data.erase_prob)}

    arms = args.arms or DEFAULT_ARMS[name]
    decord = has_decord()
    if not decord and ("videomae" in arms or "pinned" in arms):
        skips.append(f"{name}: VideoMAE arm skipped: decord is not installed "
                     "(pip install decord)")
    for arm in arms:
        if arm == "mar":
            kept = timed(arm, ours(cfg), keep=True)
            rates, cpu_rates = time_finish(kept, cfg.dataset("train").clips.transform,
                                           args.repeats)
            rows.append(Row(name, "finish", MAIN_SIDE, 1, rates, cpu_rates, main_side=True))
        elif arm == "videomae" and decord:
            timed(arm, videomae())
        elif arm == "before":
            timed(arm, ours(cfg, **BEFORE))
        elif arm in LEVERS:
            if arm == "nonref":
                skips.append(f"{name}: " + check_nonref(paths, sampling))
            timed(arm, ours(cfg, **BEFORE | LEVERS[arm]))
        elif arm == "uncached":
            timed(arm, ours(cfg, probe_cache=False))
        elif arm == "resized":
            resized, why = resized_paths(paths, work, name)
            if not resized:
                skips.append(f"{name}: (e) re-encoded arm skipped: {why}")
                continue
            re_list = write_records(work / "lists" / f"{name}_resized.csv",
                                    cycled(resized, args.clips))
            timed(arm, ours(config_for(name, re_list, args.aug_repeats)))
        elif arm == "torchcodec":
            if "torchcodec" not in available_backends():
                skips.append(f"{name}: (f) torchcodec arm skipped: torchcodec does not "
                             "import or work here (it needs a system FFmpeg)")
                continue
            timed(arm, ours(cfg, ApproximateTorchCodec()))
        elif arm == "pinned":
            if len(cores) < 2:
                skips.append(f"{name}: pinned arms skipped: this process may use one core")
                continue
            for pin, parts in [("mar", ours(cfg)), ("before", ours(cfg, **BEFORE)),
                               ("videomae", videomae() if decord else None)]:
                if parts is not None:
                    timed(pin, parts, f"{ARMS[pin]}, pinned", pinned=True)
    return rows


def stage_times(name: str, paths: list[Path], args) -> dict[str, float]:
    """Milliseconds per decoded clip of each stage (the augmentations: per augmented clip)
    in this process, on one thread: where the time goes. Imports decord."""
    cfg = config_for(name, Path(args.work) / "lists" / f"{name}.csv", args.aug_repeats)
    sampling = ClipSampling(cfg.data.sampling, cfg.data.num_frames, cfg.data.stride)
    # no probe cache: each probe is timed
    shipped, counting = PyAVBackend(probe_cache=0), PyAVBackend(skip_nonref=False, probe_cache=0)
    transform = cfg.dataset("train").clips.transform
    videomae = None
    if has_decord():
        from decord import VideoReader, cpu
        from videomae_loader import VideoMAETrainClips

        videomae = VideoMAETrainClips([], sampling, rand_augment=cfg.data.rand_augment,
                                      flip=name != "ssv2")
    generator = torch.Generator().manual_seed(0)
    totals: dict[str, float] = {}

    def clock(stage: str, work, *args):
        start = time.perf_counter()
        out = work(*args)
        totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - start
        return out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one FFmpeg thread, as in a loader worker
        with mock.patch("mar.data.decode.decoder_threads", lambda: 1):
            for k in range(args.clips):
                path = str(paths[k % len(paths)])
                turn = 1 if k % 2 == 0 else -1  # alternate: the first pays for cold caches
                info = clock("probe", shipped.probe, path)
                indices = sampling.indices(info.num_frames, train=True, generator=generator)
                for stage, backend in [("decode", shipped),
                                       ("decode every frame", counting)][::turn]:
                    frames = clock(stage, backend.read, path, indices, info)
                clip, _, draw = clock("augment", transform.augment, frames, 0, generator)
                clock("finish", finish, clip[None], draw[None], transform.mean, transform.std)
                clock("before: normalise + erase", old_finish, clip, draw, transform.mean,
                      transform.std)
                if videomae is not None:
                    reader = clock("VideoMAE: decord open",
                                   partial(VideoReader, num_threads=1), path, cpu(0))
                    full = clock("VideoMAE: get_batch",
                                 lambda r, i: r.get_batch(i).asnumpy(), reader, indices)
                    clock("VideoMAE: augment", videomae.augment, full)
    finally:
        torch.set_num_threads(threads)
    return {stage: 1000 * t / args.clips for stage, t in totals.items()}


# ---------------------------------------------------------------- GPU demand

def training_gmacs(config: str) -> tuple[float, float]:
    """(forward GMACs of one training clip as `mar train` builds the model: encoder on the
    visible tokens + head + reconstruction decoder when it trains one, deploy GMACs of
    :func:`mar.flops.model_cost`), counted on the meta device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from mar.config import load_config
    from mar.engine.trainer import build_model
    from mar.flops import model_cost
    from mar.runtime.distributed import DistInfo

    cfg = load_config(config)
    meta = torch.device("meta")
    with meta:
        model = build_model(cfg, DistInfo(0, 1, 0, meta)).train()
    mask = cfg.masking.build()(1, model.grid, train=True).to(meta)
    t, h, w = model.grid
    pe = model.encoder.patch_embed
    video = torch.zeros(1, 3, t * pe.tubelet_size, h * pe.patch_size, w * pe.patch_size,
                        device=meta)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(video, mask)
    kwargs = cfg.model.model_dump(exclude={"name"})
    deploy = model_cost(cfg.model.name, cfg.test_masking(), **kwargs).gflops
    return counter.get_total_flops() / 2 / 1e9, deploy


def gpu_lines(rows: list[Row], tflops: float, util: float) -> tuple[list[str], dict]:
    lines = [f"GPU demand: a training step ~ 3 x the forward (forward + backward); mar.flops "
             f"counts multiply-adds as fvcore does, so FLOPs = 2 x MACs; GPU at {tflops:g} "
             f"TFLOP/s dense bf16 (H100 SXM) x {util:.0%} utilisation."]
    demand = {}
    for label, config in (("ViT-B MAR-50", "k400_vit_base_mar50"),
                          ("ViT-B standard", "k400_vit_base_standard")):
        fwd, deploy = training_gmacs(config)
        clips = tflops * 1e12 * util / (3 * 2 * fwd * 1e9)
        demand[label] = {"forward_gmacs": fwd, "deploy_gmacs": deploy, "gpu_clips_s": clips}
        lines.append(f"- {label} ({config}): training forward {fwd:.1f} GMACs per clip "
                     f"(deploy {deploy:.1f}), so one GPU consumes {clips:.0f} clips/s")
    for s in dict.fromkeys(r.set for r in rows):
        for arm in ("mar", "uncached", "before", "videomae"):
            row = next((r for r in rows if r.set == s and r.arm == arm and not r.pinned
                        and not r.main_side), None)
            if row is None:
                continue
            need = ", ".join(f"{label} {d['gpu_clips_s'] / row.per_core:.0f} "
                             f"({d['gpu_clips_s'] / row.per_cpu_second:.0f})"
                             for label, d in demand.items())
            lines.append(f"- cores per GPU, {s}, {row.label} ({row.per_core:.2f} clips/s per "
                         f"core; by CPU time {row.per_cpu_second:.2f}): {need}")
    return lines, demand


# ---------------------------------------------------------------- report

def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import av

    found = {"torch": torch.__version__, "av": av.__version__}
    for name in ("decord", "eva-decord"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    if "decord" not in found and "eva-decord" not in found:
        found["decord"] = "not installed"
    return found


def table(rows: list[Row]) -> list[str]:
    """Each rate also against VideoMAE's and mar before the levers (the same set, pinned
    or not); the ``finish`` row against nothing: it adds to the workers' time."""
    def vs(r: Row, arm: str, rate: str) -> str:
        ref = next((v for v in rows if v.set == r.set and v.arm == arm
                    and v.pinned == r.pinned), None)
        if ref is None or r.main_side:
            return ""
        return f"{getattr(r, rate) / getattr(ref, rate):.2f}x"

    out = ["| set | pipeline / lever | workers | clips/s machine | clips/s per core | "
           "vs VideoMAE | vs before | clips per CPU-s | vs VideoMAE | vs before |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        machine = "" if r.main_side else f"{r.machine:.2f}"
        workers = "main, 1 core" if r.main_side else \
            f"{r.workers}{' pinned' if r.pinned else ''}"
        out.append(f"| {r.set} | {r.label} | {workers} | {machine} | {r.per_core:.2f} "
                   f"| {vs(r, 'videomae', 'per_core')} | {vs(r, 'before', 'per_core')} "
                   f"| {r.per_cpu_second:.2f} | {vs(r, 'videomae', 'per_cpu_second')} "
                   f"| {vs(r, 'before', 'per_cpu_second')} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS),
                        help="the arms of every set (default: all on kinetics, those that "
                        "can differ on the others: DEFAULT_ARMS)")
    parser.add_argument("--clips", type=int, default=12,
                        help="decoded clips per pass (each gives --aug-repeats clips); a "
                        "multiple of --batch x --workers keeps the workers equally busy")
    parser.add_argument("--aug-repeats", type=int, default=2,
                        help="repeated augmentation (data.repeats, VideoMAE's num_sample)")
    parser.add_argument("--batch", type=int, default=2, help="videos per batch")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="DataLoader workers (default: the cores this process may use)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--videos", type=int, default=6, help="files per set")
    parser.add_argument("--seconds", type=float,
                        help="length of the made videos (default: kinetics 10, ssv2 3-4)")
    parser.add_argument("--work", default=str(ROOT / ".bench-loader"),
                        help="where the videos, lists and re-encoded files are kept")
    parser.add_argument("--gpu-tflops", type=float, default=989.0,
                        help="GPU dense bf16 TFLOP/s (H100 SXM: 989)")
    parser.add_argument("--gpu-util", type=float, default=0.35, help="its utilisation")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from mar.runtime.device import cpu_flags, cpu_name

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")  # generated data: never committed
    start = time.perf_counter()
    rows: list[Row] = []
    skips: list[str] = []
    videos = {name: set_videos(name, work, args.videos, args.seconds) for name in args.sets}
    for name in args.sets:
        print(f"{name}:", flush=True)
        rows += run_set(name, videos[name], args, skips)
    stages = {name: stage_times(name, videos[name], args) for name in args.sets
              if "stages" in (args.arms or DEFAULT_ARMS[name])}
    lines, demand = gpu_lines(rows, args.gpu_tflops, args.gpu_util)

    flags = sorted(f for f in cpu_flags() or () if f.startswith(("avx", "sse4", "amx")))
    info = versions()
    print(f"\n{cpu_name()} ({len(os.sched_getaffinity(0))} cores usable; {' '.join(flags)}); "
          + ", ".join(f"{k} {v}" for k, v in info.items())
          + f"; {args.clips} decoded clips x {args.aug_repeats} augmentations per pass, batch "
          f"{args.batch} videos, median of {args.repeats} passes after a warm-up; per core = "
          "machine / workers, or the pinned worker's rate; clips per CPU-s: per second of "
          "CPU time of the workers and the main process (little moved by other load)\n")
    print("\n".join(table(rows)))
    print()
    for line in skips:
        print(line)
    for name, ms in stages.items():
        print(f"{name}, ms per decoded clip on one thread (augment, finish, before: per "
              "augmented clip): "
              + ", ".join(f"{stage} {t:.1f}" for stage, t in ms.items()))
    print("\n".join(lines))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_name(), "cpu_flags": flags, "versions": info,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "rows": [{"set": r.set, "arm": r.arm, "label": r.label, "workers": r.workers,
                      "pinned": r.pinned, "main_side": r.main_side, "rates": r.rates,
                      "cpu_rates": r.cpu_rates, "machine": r.machine, "per_core": r.per_core,
                      "per_cpu_second": r.per_cpu_second} for r in rows],
            "notes": skips, "stages_ms": stages, "gpu": demand}, indent=1))


if __name__ == "__main__":
    main()
