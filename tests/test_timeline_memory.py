"""benchmarks/bench_timeline_memory.py: its long videos have the asked length (read back
with PyAV) and are made once; a measured `mar predict --window` run gives a peak RSS and
the window count of the video. Memory ratios are the benchmark's to report, not asserted
(noisy on a shared machine)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from mar.data.windows import window_starts

spec = importlib.util.spec_from_file_location(
    "bench_timeline_memory",
    Path(__file__).resolve().parents[1] / "benchmarks" / "bench_timeline_memory.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_timeline_memory"] = bench  # its dataclasses look their module up
spec.loader.exec_module(bench)

SIZE, FPS = (128, 72), 10  # small and sparse: the test is about lengths, not pixels


def import_only_peak_mib() -> float:
    """Peak RSS (MiB, ``os.wait4``) of a process that imports torch and ``mar.cli`` and
    exits: the floor under any ``mar predict`` run."""
    proc = subprocess.Popen([sys.executable, "-c", "import torch, mar.cli"])
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {s: bench.make_long_video(folder, s, size=SIZE, fps=FPS) for s in (6, 30)}


@pytest.mark.parametrize("seconds", [6, 30])
def test_long_video_has_the_asked_duration(videos, seconds):
    with av.open(str(videos[seconds])) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate = float(stream.average_rate)
        size = (stream.codec_context.width, stream.codec_context.height)
    assert frames == seconds * FPS and rate == FPS and size == SIZE
    assert frames / rate == pytest.approx(seconds)


def test_long_video_is_made_once(videos, tmp_path):
    path = videos[6]
    before = path.stat().st_mtime_ns
    assert bench.make_long_video(path.parent, 6, size=SIZE, fps=FPS) == path
    assert path.stat().st_mtime_ns == before


def test_measure_gives_peak_rss_and_windows(videos, tmp_path):
    model = bench.make_model(tmp_path, "vit_nano", frames=4, size=32, patch=8)
    seconds, video = 30, videos[30]  # one `mar predict` process: its start-up is the cost
    run = bench.measure(video, model, tmp_path / "out")
    assert run.windows == len(window_starts(seconds, 2, 2)) == seconds // 2
    assert run.seconds == pytest.approx(seconds)
    # a real high-water mark of that process: at least every RSS sampled from /proc while
    # it ran, and at least what a process that only imports torch and the CLI holds (the
    # same wait4 measure); and bounded: a 30 s timeline of a tiny model streams its frames
    sampled = max(rss for _, rss in run.samples)
    imports = import_only_peak_mib()
    assert sampled <= run.peak_rss_mib + 0.1
    # (<=: wait4's high-water mark includes what the child held right after the fork,
    # the parent's resident pages, so inside a large test process both can be that)
    assert imports <= run.peak_rss_mib < imports + 400, (imports, run.peak_rss_mib)
    assert run.wall_s > 0 and run.samples
    assert (tmp_path / "out" / f"{video.stem}.timeline.json").is_file()

