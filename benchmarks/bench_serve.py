"""``mar serve`` under load: throughput and latency with micro-batching vs without, or
across runtimes.

``--compare batching`` (the default) starts two servers on free localhost ports, on the
same random model and the same synthetic video, one with ``--max-batch-size 1`` (no
batching) and one with batching (on torch, ``OMP_NUM_THREADS=1`` in the servers).
``--compare runtimes`` starts one batching server per ``--runtimes`` entry (``torch``,
``onnxruntime``, ``openvino``, ``auto``, and ``onnxruntime-int8`` / ``openvino-int8`` for
``--int8``; default: every one installed), each with the threads its runtime takes by
default. Each server is driven with ``--clients`` concurrent HTTP clients posting the
video, in turns (A, B, A, B, ...) so machine noise hits all alike. Each request is
``--views`` views (``data.test_clips``). The table gives medians over the repeats:
answered requests per second, median and 95th-percentile latency, 429s (the designed
answer when more requests are in flight than ``--queue-size``), the server's resident
memory, and the runtime that answered (``/readyz``).

    python benchmarks/bench_serve.py --repeats 3
    python benchmarks/bench_serve.py --compare runtimes --repeats 3

The tests use :class:`ServerProcess` and :func:`run_load` (tests/test_serve.py).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m mar serve --checkpoint CHECKPOINT ARGS`` on a free localhost port, as
    a context manager that waits for ``/readyz`` and stops the server (SIGTERM) after."""

    def __init__(self, checkpoint: str | Path, *args: str, token: str | None = None,
                 startup_timeout: float = 180.0, omp_threads: int | None = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        # the server's output, read back by output(); closed in __exit__
        self.log = tempfile.NamedTemporaryFile("w+", prefix="mar-serve-",  # noqa: SIM115
                                               suffix=".log")
        command = [sys.executable, "-m", "mar", "serve", "--checkpoint", str(checkpoint),
                   "--port", str(self.port), *args]
        if token:
            command += ["--token", token]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if omp_threads:
            env["OMP_NUM_THREADS"] = str(omp_threads)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)
        self.wait_ready(startup_timeout)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mar serve exited with {self.process.returncode}:\n"
                                   f"{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mar serve not ready after {timeout:g} s:\n{self.output()}")

    def metric(self, name: str, default: float | None = None) -> float:
        """One sample of ``/metrics`` (the first line that starts with ``name``), or
        ``default`` when there is none yet."""
        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        if default is not None:
            return default
        raise KeyError(f"{name} not in /metrics")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()


@dataclass
class LoadResult:
    codes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)   # seconds, answered (200) only
    errors: list[str] = field(default_factory=list)        # transport errors
    wall_s: float = 0.0

    @property
    def throughput(self) -> float:
        return self.codes[200] / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(url: str, video: bytes, filename: str = "clip.mp4", clients: int = 8,
             requests: int = 200, time_limit: float = 120.0,
             headers: dict | None = None, busy_pause: float = 0.02) -> LoadResult:
    """``clients`` threads post ``video`` to ``url``/v1/predict until ``requests`` have
    been answered or ``time_limit`` seconds have passed. A 429 is not an answer: the
    client pauses ``busy_pause`` seconds and sends the same request again, as a client
    that honours Retry-After does; every 429 is still counted in ``codes``."""
    result = LoadResult()
    counter = itertools.count()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client() -> None:
        with httpx.Client(timeout=120, headers=headers or {}) as http:
            while next(counter) < requests:
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    try:
                        r = http.post(f"{url}/v1/predict", files={"video": (filename, video)})
                    except httpx.HTTPError as e:
                        with lock:
                            result.errors.append(f"{type(e).__name__}: {e}")
                        break
                    elapsed = time.perf_counter() - start
                    with lock:
                        result.codes[r.status_code] += 1
                        if r.status_code == 200:
                            result.latencies.append(elapsed)
                    if r.status_code != 429:
                        break
                    time.sleep(busy_pause)
                else:
                    return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - start
    return result


def make_model(folder: Path, name: str, frames: int, size: int, patch: int) -> Path:
    import torch

    from mar import create_model
    from mar.models.io import save_model

    kwargs = {"name": name, "num_classes": 174, "num_frames": frames, "img_size": size,
              "patch_size": patch, "decoder": False}
    torch.manual_seed(0)
    return save_model(create_model(**kwargs), kwargs, folder / "model",
                      masking={"name": "cell_running", "ratio": 0.5})


def make_video(path: Path, frames: int = 48, size: tuple[int, int] = (320, 240)) -> Path:
    """A 2-second H.264 clip: a bright square moving over a colour gradient."""
    import numpy as np

    from mar.data.video_writer import write_video

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    background = np.stack([255 * x / w, 255 * y / h, np.full_like(x, 96.0)], -1)
    clip = np.repeat(background[None], frames, 0).astype(np.uint8)
    side = h // 4
    for t in range(frames):
        left = (t * (w - side)) // frames
        clip[t, h // 3:h // 3 + side, left:left + side] = (250, 250, 40)
    return write_video(path, clip, fps=25)


RUNTIME_ARMS = {"torch": ["--runtime", "torch"], "auto": [],
                "onnxruntime": ["--runtime", "onnxruntime"],
                "openvino": ["--runtime", "openvino"],
                "onnxruntime-int8": ["--runtime", "onnxruntime", "--int8"],
                "openvino-int8": ["--runtime", "openvino", "--int8"]}


def installed_arms() -> list[str]:
    """The runtime arms this machine can run."""
    from mar.inference.runtime import installed

    fp32, int8 = installed(), installed(int8=True)
    return [*fp32, *(f"{r}-int8" for r in int8)]


def setups_for(args) -> dict[str, list[str]]:
    """server name -> its extra ``mar serve`` arguments."""
    batching = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms",
                str(args.max_wait_ms)]
    if args.compare == "runtimes":
        return {f"--runtime {name.replace('-int8', ' --int8')}": [*RUNTIME_ARMS[name],
                                                                 *batching]
                for name in args.runtimes or installed_arms()}
    return {"no batching (--max-batch-size 1)": ["--runtime", "torch", "--max-batch-size", "1",
                                                 "--max-wait-ms", "0"],
            f"batching (--max-batch-size {args.max_batch_size}, --max-wait-ms "
            f"{args.max_wait_ms:g})": ["--runtime", "torch", *batching]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--views", type=int, default=1, help="clips per request (test_clips)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--queue-size", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compare", choices=["batching", "runtimes"], default="batching")
    p.add_argument("--runtimes", nargs="+", choices=list(RUNTIME_ARMS),
                   help="with --compare runtimes (default: every one installed)")
    args = p.parse_args()
    from bench_runtime import instruction_sets, versions  # this script's folder

    from mar.runtime.device import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_model(folder, args.model, args.frames, args.size, args.patch_size)
        video = make_video(folder / "clip.mp4").read_bytes()
        common = ["--set", f"data.test_clips={args.views}", "--set", "data.test_crops=1",
                  "--queue-size", str(args.queue_size), "--log-level", "warning"]
        setups = setups_for(args)
        omp = 1 if args.compare == "batching" else None
        results: dict[str, list[LoadResult]] = {name: [] for name in setups}
        rss: dict[str, float] = {}
        stages: dict[str, dict[str, float]] = {}
        servers = {}
        answered: dict[str, str] = {}
        try:
            for name, extra in setups.items():
                servers[name] = ServerProcess(model, *common, *extra, omp_threads=omp)
                answered[name] = httpx.get(f"{servers[name].url}/readyz",
                                           timeout=10).json()["model"]["runtime"]
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        try:
            for server in servers.values():  # warm-up pass, not counted
                run_load(server.url, video, clients=args.clients, requests=2 * args.clients)
            for _ in range(args.repeats):
                for name, server in servers.items():
                    results[name].append(run_load(server.url, video, clients=args.clients,
                                                  requests=args.requests,
                                                  time_limit=args.time_limit))
                    rss[name] = server.metric("process_resident_memory_bytes") / 2**20
            for name, server in servers.items():   # mean ms per request, all runs
                stages[name] = {
                    stage: 1000 * server.metric(f'mar_request_seconds_sum{{stage="{stage}"}}')
                    / server.metric(f'mar_request_seconds_count{{stage="{stage}"}}')
                    for stage in ("decode", "queue", "model")}
                stages[name]["views"] = (server.metric("mar_batch_views_sum")
                                         / server.metric("mar_batch_views_count"))
        finally:
            for server in servers.values():
                server.stop()

    print(f"mar serve, {args.model} {args.frames}x{args.size}^2 patch {args.patch_size}, "
          f"cell running 50 %, {args.views} view(s) per request, {args.clients} clients x "
          f"{args.requests} requests, median of {args.repeats} repeats; "
          f"{cpu_name()}, {os.cpu_count()} CPUs ({instruction_sets()}), "
          f"{'OMP_NUM_THREADS=1' if omp else 'default threads'} in the server, {versions()}")
    print("| server | runtime answering | requests/s | p50 latency ms | p95 latency ms | 200 | "
          "429 | other | RSS MiB | decode / queue / model ms (mean) | views per model call "
          "(mean) |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, runs in results.items():
        med = statistics.median
        other = sum(sum(n for c, n in r.codes.items() if c not in (200, 429)) + len(r.errors)
                    for r in runs)
        print(f"| {name} | {answered[name]} | {med(r.throughput for r in runs):.1f} | "
              f"{1000 * med(r.percentile(0.5) for r in runs):.0f} | "
              f"{1000 * med(r.percentile(0.95) for r in runs):.0f} | "
              f"{sum(r.codes[200] for r in runs)} | {sum(r.codes[429] for r in runs)} | "
              f"{other} | {rss[name]:.0f} | {stages[name]['decode']:.0f} / "
              f"{stages[name]['queue']:.0f} / {stages[name]['model']:.0f} | "
              f"{stages[name]['views']:.1f} |")


if __name__ == "__main__":
    main()
