"""Long videos: peak memory of ``mar predict --window`` for a 1-minute and a 10-minute video.

The timeline decodes as a stream (``mar.data.windows``): only the frames of the windows still
open are held, so the peak resident memory (RSS) of ``mar predict`` should not grow with
the video's length; only the per-window probabilities do (windows x classes floats, 1.4
MB for 10 minutes of 2-second windows and 174 classes: nothing next to the model).

Videos: the test videos of ``tests/data/videos`` (``bigbuckbunny.mp4``, ``Megamind.avi``,
``tree.avi``; not the damaged ``Megamind_bugy.avi``) chained end to end in a loop until the wanted
length, every decoded frame rescaled to 640x360 (a stated smaller size than the 720p
source: the sources differ in size and a video needs one) and re-encoded as H.264 at
25 fps, one decoded frame per output frame (so the 24 fps and 15 fps sources play a
little fast). Written as a stream (``encode_stream``: one frame in memory at a time) and
once: kept in ``--out`` and reused when its duration is right.

Model: a random ``--model`` (default ``vit_tiny``) at 16 frames, 224x224, patch 16, 174
classes and the MAR 50 % test masking, saved as ``benchmarks/bench_serve.py`` saves its
model (its ``make_model``).

Each run is the real user command, one process per run:

    mar predict VIDEO --checkpoint MODEL --window 2 --stride 2 --out DIR [--render]

(``--out`` is a folder: ``<video>.timeline.json/.csv/.png``, and ``.mp4`` with
``--render``). Peak RSS is the kernel's high-water mark of that process
(``ru_maxrss`` from ``os.wait4`` on its pid: exact, no sampling gaps, and only that child,
unlike ``RUSAGE_CHILDREN``, which is the maximum over every child the parent waited
for). The ``/proc`` RSS is also sampled every 0.2 s and kept for ``--json``: the curve
shows growth that the start-up could hide under the peak. Windows are counted in the
written JSON. The runs alternate 1-minute, 10-minute; medians of
``--repeats``; ``--render`` runs once per video. ``--env KEY=VALUE`` adds an arm that
runs the same command with that environment, interleaved with the default (e.g. glibc's
``MALLOC_MMAP_THRESHOLD_=1048576``, which returns large freed blocks to the kernel: it
separates what the allocator keeps from what the program holds).

    python benchmarks/bench_timeline_memory.py --repeats 3 --env MALLOC_MMAP_THRESHOLD_=1048576
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT / "tests" / "data" / "videos"       # the test videos (their README)
SOURCES = ("bigbuckbunny.mp4", "Megamind.avi", "tree.avi")
FPS = 25
SIZE = (640, 360)


def _bench_serve():
    """``benchmarks/bench_serve.py`` as a module (benchmarks/ is not a package)."""
    if "bench_serve" in sys.modules:
        return sys.modules["bench_serve"]
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "benchmarks" /
                                                  "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def video_duration(path: str | Path) -> float:
    """Seconds of ``path``: its frame count over its frame rate (PyAV; the count from the
    header when it has one, as the MP4s made here do, else by decoding every frame)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        frames = stream.frames or sum(1 for _ in container.decode(stream))
    return frames / rate


def _looped_frames(total: int, size: tuple[int, int]):
    """``total`` RGB frames of ``size`` from the test videos, chained in a loop; decoded
    as a stream, one frame at a time."""
    import av

    count = 0
    while True:
        for name in SOURCES:
            with av.open(str(VIDEOS / name)) as container:
                for frame in container.decode(video=0):
                    if count == total:
                        return
                    yield frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                    count += 1


def make_long_video(folder: str | Path, seconds: float, size: tuple[int, int] = SIZE,
                    fps: int = FPS) -> Path:
    """``folder/long_<seconds>s_<W>x<H>.mp4``: the test videos looped to ``seconds``
    (``round(seconds * fps)`` frames), written once and reused (see the module docstring).
    """
    from mar.atomic import write_file
    from mar.data.video_writer import encode_stream

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"long_{seconds:g}s_{size[0]}x{size[1]}.mp4"
    total = round(seconds * fps)
    if path.is_file() and abs(video_duration(path) - total / fps) < 0.5 / fps:
        return path
    missing = [n for n in SOURCES if not (VIDEOS / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{VIDEOS}: missing test videos {', '.join(missing)}")
    return write_file(path, lambda tmp: encode_stream(tmp, "mp4", _looped_frames(total, size),
                                                      fps))


def make_model(folder: str | Path, name: str, frames: int = 16, size: int = 224,
               patch: int = 16) -> Path:
    """A random ``name`` model directory (``bench_serve.make_model``), made once."""
    folder = Path(folder) / f"{name}-{frames}x{size}"
    if (folder / "model" / "config.json").is_file():
        return folder / "model"
    return _bench_serve().make_model(folder, name, frames, size, patch)


@dataclass
class Run:
    """One ``mar predict`` process."""

    video: str
    seconds: float
    render: bool
    env: str = ""  # the arm's extra environment, e.g. MALLOC_MMAP_THRESHOLD_=1048576
    peak_rss_mib: float = 0.0
    wall_s: float = 0.0
    windows: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s, RSS MiB)


def mar_command() -> str:
    """The ``mar`` console script of this Python's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "mar"
    found = str(beside) if beside.is_file() else shutil.which("mar")
    if found is None:
        raise FileNotFoundError("the mar command is not installed (pip install -e .)")
    return found


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(video: str | Path, model: str | Path, out: str | Path, *, window: float = 2,
            stride: float = 2, render: bool = False, extra: tuple[str, ...] = (),
            env: dict | None = None, timeout: float = 3600) -> Run:
    """Run ``mar predict VIDEO --window .. --stride .. --out OUT`` as its own process (with
    ``env`` added to this one's environment) and return its peak RSS (``os.wait4``), wall
    time and window count (from its JSON)."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [mar_command(), "predict", str(video), "--checkpoint", str(model),
           "--window", f"{window:g}", "--stride", f"{stride:g}", "--out", str(out), *extra]
    if render:
        cmd.append("--render")
    run = Run(str(video), 0.0, render, " ".join(f"{k}={v}" for k, v in (env or {}).items()))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    stop = threading.Event()
    stderr: list[bytes] = []

    def sample() -> None:
        while not stop.wait(0.2):
            rss = _rss_mib(proc.pid)
            if rss is not None:
                run.samples.append((round(time.perf_counter() - start, 2), round(rss, 1)))

    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"mar predict {video}: over {timeout:g} s")
            time.sleep(0.05)
    except BaseException:  # timeout, Ctrl-C: leave no orphan behind
        proc.kill()
        os.wait4(proc.pid, 0)
        proc.returncode = -9
        stop.set()
        raise
    run.wall_s = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    for t in threads:
        t.join()
    if proc.returncode != 0:
        tail = b"".join(stderr).decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"mar predict {video}: exit {proc.returncode}: " + " | ".join(tail))
    run.peak_rss_mib = usage.ru_maxrss / 1024  # KiB on Linux
    data = json.loads((out / f"{Path(video).stem}.timeline.json").read_text())
    run.windows = len(data["windows"])
    run.seconds = video_duration(video)
    return run


def cpu_name() -> str:
    # mar.runtime.device.cpu_name, not imported: this process stays free of torch, whose
    # pages every measured child would inherit at the fork (wait4's high-water mark)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_range(values: list[float], digits: int = 0) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def table(runs: list[Run]) -> str:
    """The markdown table of the runs, grouped by (environment, video, render)."""
    lines = ["| environment | video | --render | windows | repeats "
             "| peak RSS MiB, median (min-max) | wall s | windows/s |",
             "|---|---|---|--:|--:|--:|--:|--:|"]
    keys = []
    for r in runs:
        if (r.env, r.video, r.render) not in keys:
            keys.append((r.env, r.video, r.render))
    for env, video, render in sorted(keys, key=lambda k: (k[0], k[2])):
        group = [r for r in runs if (r.env, r.video, r.render) == (env, video, render)]
        wall = statistics.median(r.wall_s for r in group)
        minutes = group[0].seconds / 60
        lines.append(f"| {env or 'default'} | {minutes:g} min ({group[0].seconds:.0f} s) "
                     f"| {'yes' if render else 'no'} | {group[0].windows} | {len(group)} "
                     f"| {_fmt_range([r.peak_rss_mib for r in group])} "
                     f"| {wall:.1f} | {group[0].windows / wall:.2f} |")
    return "\n".join(lines)


def ratio(runs: list[Run], short: str, long: str, render: bool = False, env: str = ""
          ) -> float:
    """Median peak RSS of the ``long`` video over that of the ``short`` one."""
    def peak(video: str) -> float:
        return statistics.median(r.peak_rss_mib for r in runs
                                 if (r.env, r.video, r.render) == (env, video, render))
    return peak(long) / peak(short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / ".bench-timeline"),
                        help="videos, the model and the runs' outputs (kept, reused)")
    parser.add_argument("--model", default="vit_tiny", help="vit_nano, vit_tiny, vit_small..")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--minutes", type=float, nargs=2, default=[1, 10],
                        help="the two video lengths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-render", action="store_true", help="skip the --render runs")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a second arm with these environment variables (repeatable; "
                        "e.g. MALLOC_MMAP_THRESHOLD_=1048576), interleaved with the default")
    parser.add_argument("--json", help="also write every run (with its RSS samples) here")
    args = parser.parse_args()

    out = Path(args.out)
    t0 = time.perf_counter()
    videos = [make_long_video(out / "videos", 60 * m) for m in args.minutes]
    print(f"videos ready in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{v.name} ({video_duration(v):.0f} s)" for v in videos), file=sys.stderr)
    model = make_model(out / "models", args.model, args.frames, args.size)
    runs: list[Run] = []
    arms = [{}]
    if args.env:
        if any("=" not in e for e in args.env):
            parser.error(f"--env {args.env}: expected KEY=VALUE")
        arms.append(dict(e.split("=", 1) for e in args.env))
    plan = [(v, False, arm) for _ in range(args.repeats) for v in videos for arm in arms]
    if not args.no_render:
        plan += [(v, True, {}) for v in videos]
    for k, (video, render, arm) in enumerate(plan):
        run = measure(video, model, out / "runs" / f"{k}", render=render, env=arm)
        runs.append(run)
        print(f"[{k + 1}/{len(plan)}] {run.env + ' ' if run.env else ''}"
              f"{video.name}{' --render' * render}: "
              f"{run.peak_rss_mib:.0f} MiB peak, {run.wall_s:.1f} s, {run.windows} windows",
              file=sys.stderr)

    short, long = str(videos[0]), str(videos[1])
    print(f"\nmar predict VIDEO --checkpoint MODEL --window 2 --stride 2 --out DIR: "
          f"{args.model}, {args.frames} frames {args.size}x{args.size}, MAR 50 % test masking; "
          f"torch threads default; {os.cpu_count()} CPUs, {cpu_name()}, "
          f"Python {platform.python_version()}\n")
    print(table(runs))
    print(f"\npeak RSS {args.minutes[1]:g}-min / {args.minutes[0]:g}-min: "
          f"{ratio(runs, short, long):.3f}"
          + (f"; with --render: {ratio(runs, short, long, True):.3f}"
             if not args.no_render else "")
          + "".join(f"; {env}: {ratio(runs, short, long, env=env):.3f}"
                    for env in dict.fromkeys(r.env for r in runs if r.env)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))


if __name__ == "__main__":
    main()
