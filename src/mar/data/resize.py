"""``mar data resize``: re-encode every video of a list once, smaller and easy to seek.

Kinetics-style sources are often 720p or more with a keyframe every 5-10 s; a training
clip (16 frames at stride 4: 61 frames, 2 s at 30 fps) then decodes full-size frames from
the last keyframe, often from the start of the file. One pass through :func:`resize_list`
writes each video as H.264 (libx264, yuv420p, closed GOPs, no audio) with the short side
``short_side`` (never upscaled), the same frames and the same timestamps.

The defaults, and why:

- ``short_side`` 320: the usual re-encoded Kinetics (VideoMAE-style data preparation,
  mmaction2's ``320p`` sets); training crops 224 pixels (area 0.08-1) from it.
- ``keyframe_interval`` 1.0 s: decoding starts at the keyframe before a clip's first
  frame, so a clip decodes on average ``(gop - 1) / 2`` frames it does not use: 14.5 at
  30 fps (+24% over the 61 frames of its span), 29.5 (+48%) at 2 s, most of the video at
  x264's default of 250 frames. Storage is paid once, decoding every epoch; 0.5 s would
  save 12% more decoding for a quarter more bytes (``bigbuckbunny.mp4`` at 568x320, CRF
  23: 0.58 MB at 0.5 s, 0.46 MB at 1 s, 0.38 MB at 2 s, 0.30 MB at 10 s). Keyframes fall
  exactly every ``round(keyframe_interval * fps)`` frames (average rate): scene-cut
  keyframes are off and the source's own I-frames are not copied.
- ``crf`` 23, ``preset`` medium: x264's own defaults. ``veryfast`` halves the file at the
  same CRF but loses 4 dB (32.5 against 36.7 dB PSNR on that video); decoding the large
  source, not encoding 320p, takes most of the time.

Resumable: each output is written to a temporary sibling and renamed when complete
(:func:`mar.atomic.write_file`); its container comment records the settings, the
source's size in bytes and its frame count. A rerun skips an output newer than its source
whose comment matches the settings and the source and whose frame count is the source's
(found without reading the source); anything else is redone, and a temporary file left
by a killed run is deleted.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import json
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from ..atomic import TMP, write_file
from .check import write_report
from .decode import DecodeError, PyAVBackend, _short, scaled_size
from .lists import VideoRecord, read_list, write_list

OPEN_TIMEOUT = 60.0  # seconds to open or probe one file
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
           "slower", "veryslow", "placebo")  # x264's, fastest first


@dataclass(frozen=True)
class ResizeSettings:
    short_side: int = 320
    keyframe_interval: float = 1.0  # seconds
    crf: int = 23
    preset: str = "medium"

    def __post_init__(self):
        if self.short_side < 2:
            raise ValueError(f"short side {self.short_side}: must be at least 2 pixels")
        if self.keyframe_interval <= 0:
            raise ValueError(f"keyframe interval {self.keyframe_interval}: must be positive")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"CRF {self.crf}: must be in 0-51")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown x264 preset {self.preset!r}; known: {', '.join(PRESETS)}")


@dataclass(frozen=True)
class ResizeResult:
    """One row of the report (``<list stem>.resize.csv``)."""

    source: str
    output: str
    status: str  # ok | skipped (done by an earlier run) | unreadable | failed (writing it)
    source_size: str = ""  # WxH
    output_size: str = ""
    frames: int = 0
    duration: float = 0.0  # seconds of video
    seconds: float = 0.0  # time spent converting
    source_bytes: int = 0
    output_bytes: int = 0
    note: str = ""


@dataclass(frozen=True)
class ResizeRun:
    results: list[ResizeResult]  # one per distinct video, in list order
    list_path: Path  # the new list, paths relative to the output folder
    report_path: Path
    listed: int  # rows in the new list (0: none written)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def summary(self) -> str:
        """``N videos: a converted, b skipped (already done), c unreadable; X -> Y``."""
        done = [r for r in self.results if r.status in ("ok", "skipped")]
        failed = f", {self.count('failed')} failed" if self.count("failed") else ""
        return (f"{len(self.results)} videos: {self.count('ok')} converted, "
                f"{self.count('skipped')} skipped (already done), "
                f"{self.count('unreadable')} unreadable{failed}; "
                f"{_bytes(sum(r.source_bytes for r in done))} -> "
                f"{_bytes(sum(r.output_bytes for r in done))}")


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def output_name(source: str, root: str | Path | None, list_dir: Path) -> Path:
    """The output path of ``source`` relative to the output folder: its path relative to
    ``root``, else to the list's folder, else to the current folder, suffix ``.mp4``."""
    path = Path(os.path.abspath(source))
    for base in (root, list_dir, Path.cwd()):
        if base is not None and path.is_relative_to(os.path.abspath(base)):
            return path.relative_to(os.path.abspath(base)).with_suffix(".mp4")
    raise ValueError(f"{source}: not under --root, the list's folder or the current "
                     "folder; give --root")


def resize_list(list_path: str | Path, out: str | Path, root: str | Path | None = None,
                settings: ResizeSettings = ResizeSettings(), workers: int | None = None,
                progress=None) -> ResizeRun:
    """Re-encode the videos of a ``path label`` list into ``out``; write the new list
    ``out/<list name>`` (the readable videos, same labels and order) and the report
    ``out/<list stem>.resize.csv``. ``progress(done, total)`` follows the videos."""
    list_path, out = Path(list_path), Path(out)
    records = read_list(list_path, root)
    new_list = out / list_path.name
    if os.path.abspath(new_list) == os.path.abspath(list_path):
        raise ValueError(f"{list_path}: the new list would replace it; choose another --out")
    outputs: dict[str, str] = {}  # source -> output
    sources: dict[str, str] = {}  # output -> source
    for r in records:
        target = str(out / output_name(r.path, root, list_path.parent))
        if os.path.abspath(target) == os.path.abspath(r.path):
            raise ValueError(f"{r.path}: the output would replace the source; choose "
                             "another --out")
        if sources.setdefault(target, r.path) != r.path:
            raise ValueError(f"{sources[target]} and {r.path} would both be written to "
                             f"{target}")
        outputs[r.path] = target
    workers = workers or min(4, os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [(source, target, settings, threads) for source, target in outputs.items()]
    results = _run(jobs, workers, progress)
    out.mkdir(parents=True, exist_ok=True)
    done = {r.source for r in results if r.status in ("ok", "skipped")}
    kept = [VideoRecord(outputs[r.path], r.label) for r in records if r.path in done]
    if kept:
        write_list(kept, new_list, root=out)
    report = out / f"{list_path.stem}.resize.csv"
    write_report(results, report, ResizeResult)
    return ResizeRun(results, new_list, report, len(kept))


def _run(jobs, workers: int, progress) -> list[ResizeResult]:
    """:func:`resize_video` of every job, in ``workers`` processes; results in job order."""
    results: dict[int, ResizeResult] = {}

    def done(i: int, result: ResizeResult) -> None:
        results[i] = result
        if progress:
            progress(len(results), len(jobs))

    if workers <= 1:
        for i, job in enumerate(jobs):
            done(i, resize_video(*job))
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(resize_video, *job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                done(futures[future], future.result())
    return [results[i] for i in range(len(jobs))]


def resize_video(source: str, output: str, settings: ResizeSettings = ResizeSettings(),
                 threads: int = 1) -> ResizeResult:
    """Re-encode one video to ``output`` (or skip it: done by an earlier run)."""
    start = time.monotonic()
    output_path = Path(output)
    done = _finished(source, output_path, settings)
    if done is not None:
        return done
    for stale in output_path.parent.glob(f"{TMP}{glob.escape(output_path.name)}-*"):
        stale.unlink(missing_ok=True)  # left by a killed run
    backend = PyAVBackend(OPEN_TIMEOUT)
    try:
        info = backend.probe(source)
        if info.num_frames == 0:
            raise DecodeError(f"{source}: no video frames")
        container = backend._open(source)
    except DecodeError as e:
        return ResizeResult(source, output, "unreadable",
                            note=str(e).removeprefix(f"{source}: "))
    source_bytes = os.path.getsize(source)
    tag = {**asdict(settings), "source_bytes": source_bytes, "source_frames": info.num_frames,
           "source_size": f"{info.width}x{info.height}"}
    notes: list[str] = []
    written = {}

    def write(tmp: Path) -> None:
        written.update(_encode(container, tmp, settings, threads, tag, notes))

    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with container:
            write_file(output_path, write)
    except _NoFrames as e:
        return ResizeResult(source, output, "unreadable", tag["source_size"],
                            source_bytes=source_bytes, note=str(e))
    except Exception as e:  # the encoder or the disk: the source was readable
        return ResizeResult(source, output, "failed", tag["source_size"],
                            source_bytes=source_bytes, note=_short(e))
    if written["count"] < info.num_frames:
        notes.append(f"{info.num_frames - written['count']} of {info.num_frames} indexed "
                     "frames do not decode")
    return ResizeResult(source, output, "ok", tag["source_size"], written["size"],
                        written["count"], round(info.end_time, 3),
                        round(time.monotonic() - start, 3), source_bytes,
                        output_path.stat().st_size, "; ".join(notes))


class _NoFrames(RuntimeError):
    pass


def _encode(container, path: Path, settings: ResizeSettings, threads: int, tag: dict,
            notes: list[str]) -> dict:
    """Decode ``container``'s first video stream into ``path`` (MP4, H.264, ``tag`` as
    the container comment); returns the frame count and the output size (``WxH``)."""
    import av

    source = container.streams.video[0]
    source.thread_type = "AUTO"
    source.codec_context.thread_count = threads
    rate = source.average_rate or source.guessed_rate or Fraction(25)
    time_base = source.time_base or 1 / Fraction(rate)
    step = max(1, round(1 / (rate * time_base)))  # one frame, in time_base units
    count, stream, size = 0, None, (0, 0)
    with av.open(str(path), "w", format="mp4") as out:
        out.metadata["comment"] = json.dumps({"mar_resize": tag})  # before the header
        for frame, pts in _restamp(_decode(container, source, notes), step):
            if stream is None:
                size = _output_size(frame.width, frame.height, settings.short_side)
                stream = out.add_stream("libx264", rate=rate)
                stream.width, stream.height = size
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = time_base
                stream.time_base = time_base
                stream.codec_context.thread_count = threads
                stream.codec_context.gop_size = max(
                    1, round(settings.keyframe_interval * float(rate)))
                stream.options = {"crf": str(settings.crf), "preset": settings.preset,
                                  "sc_threshold": "0", "flags": "+cgop"}
            frame = frame.reformat(*size, format="yuv420p", interpolation="AREA")
            frame.pts, frame.time_base = pts, time_base
            frame.pict_type = 0  # NONE: libx264 would make the source's I-frames keyframes
            for packet in stream.encode(frame):
                out.mux(packet)
            count += 1
        if stream is None:
            raise _NoFrames("no frame decodes" + (f" ({notes[0]})" if notes else ""))
        for packet in stream.encode():
            out.mux(packet)
    return {"count": count, "size": f"{size[0]}x{size[1]}"}


def _decode(container, stream, notes: list[str]):
    """Frames in presentation order; a packet that does not decode is skipped, a damaged
    container ends the stream (both noted)."""
    packets, bad = container.demux(stream), 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except Exception as e:
            notes.append(f"demuxing stopped ({_short(e)})")
            with contextlib.suppress(Exception):
                yield from stream.decode(None)  # frames still in the decoder
            break
        try:
            yield from packet.decode()
        except Exception:
            bad += 1
    if bad:
        notes.insert(0, f"{bad} packets do not decode")


def _restamp(frames, step: int, depth: int = 16):
    """``(frame, pts)``: frames in decoder order, with the source's timestamps sorted
    within ``depth`` frames (AVI with packed B-frames labels them out of order) and made
    strictly increasing (a missing or repeated one becomes the previous plus ``step``)."""
    queue: deque = deque()
    stamps: list[int] = []
    last = None

    def pop():
        nonlocal last
        pts = heapq.heappop(stamps) if stamps else None
        if pts is None or (last is not None and pts <= last):
            pts = 0 if last is None else last + step
        last = pts
        return queue.popleft(), pts

    for frame in frames:
        queue.append(frame)
        if frame.pts is not None:
            heapq.heappush(stamps, frame.pts)
        if len(queue) > depth:
            yield pop()
    while queue:
        yield pop()


def _output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height): the short side ``short_side`` unless the video is smaller (never
    upscaled), the aspect kept, both sides even (yuv420p)."""
    if min(width, height) > short_side:
        width, height = scaled_size(width, height, short_side)
    if min(width, height) < 2:
        raise _NoFrames(f"frames of {width}x{height} are too small to encode")
    return width // 2 * 2, height // 2 * 2


def _finished(source: str, output: Path, settings: ResizeSettings) -> ResizeResult | None:
    """The report row of an output that an earlier run completed from the same source
    (same size in bytes, older) with the same settings and every indexed frame, else
    None. Cheap: a stat of both and a probe of the small output, never of the source."""
    import av

    try:
        src, out = os.stat(source), os.stat(output)
        if out.st_mtime_ns < src.st_mtime_ns:
            return None
        with av.open(str(output), timeout=OPEN_TIMEOUT) as container:
            tag = json.loads(container.metadata.get("comment", ""))["mar_resize"]
        info = PyAVBackend(OPEN_TIMEOUT).probe(output)
    except Exception:  # missing, unreadable, or not ours
        return None
    expected = {**asdict(settings), "source_bytes": src.st_size,
                "source_frames": info.num_frames}
    if any(tag.get(key) != value for key, value in expected.items()):
        return None
    return ResizeResult(source, str(output), "skipped", tag.get("source_size", ""),
                        f"{info.width}x{info.height}", info.num_frames,
                        round(info.end_time, 3), 0.0, src.st_size, out.st_size,
                        "done by an earlier run")

