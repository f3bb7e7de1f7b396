"""Long videos: one prediction per window, streamed.

``mar predict VIDEO --window W --stride S`` classifies the windows ``[k·S, k·S + W)`` of
the whole video, sampled by :func:`mar.data.windows.stream_windows` (which says how
windows are sampled and how the tail is handled), centre-cropped, and scored by
:func:`mar.inference.score`. A decoding thread feeds the model, so the two overlap.
Probabilities can be smoothed over neighbouring windows (a centred moving average of
``smooth`` windows).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import write_file, write_text
from ..data.decode import scaled_size
from ..data.windows import stream_windows
from ..runtime.device import default_views_per_call, model_device
from .score import score


@dataclass
class Timeline:
    """Per-window class probabilities of one video."""

    video: str
    window: float
    stride: float
    starts: list[float]
    ends: list[float]
    probs: Tensor  # (windows, classes)
    smooth: int = 1
    seconds: float = 0.0

    def top(self, k: int) -> list[list[tuple[int, float]]]:
        values, indices = self.probs.topk(min(k, self.probs.shape[1]), dim=1)
        return [list(zip(i.tolist(), v.tolist(), strict=True))
                for i, v in zip(indices, values, strict=True)]

    def segments(self) -> list[tuple[float, float, int, float]]:
        """Runs of consecutive windows with the same top-1: (start, end, class, mean prob)."""
        out: list[list] = []
        for s, e, p in zip(self.starts, self.ends, self.probs, strict=True):
            c = int(p.argmax())
            if out and out[-1][2] == c:
                out[-1][1] = e
                out[-1][4].append(float(p[c]))
            else:
                out.append([s, e, c, 0.0, [float(p[c])]])
        return [(s, e, c, sum(ps) / len(ps)) for s, e, c, _, ps in out]

    def to_json(self, topk: int, label) -> dict:
        return {"video": self.video, "window": self.window, "stride": self.stride,
                "smooth": self.smooth, "seconds": round(self.seconds, 3),
                "windows": [{"start": round(s, 3), "end": round(e, 3),
                             "top": [{"class": c, "name": label(c), "prob": round(p, 5)}
                                     for c, p in top]}
                            for s, e, top in zip(self.starts, self.ends, self.top(topk),
                                                 strict=True)]}

    def to_csv(self, topk: int, label) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["start", "end", *(f"{x}{i + 1}" for i in range(topk)
                                           for x in ("class", "name", "prob"))])
        for s, e, top in zip(self.starts, self.ends, self.top(topk), strict=True):
            writer.writerow([f"{s:.3f}", f"{e:.3f}",
                             *(v for c, p in top for v in (c, label(c), f"{p:.5f}"))])
        return buf.getvalue()


def smooth_probs(probs: Tensor, windows: int) -> Tensor:
    """Centred moving average over ``windows`` neighbouring windows (odd; 1 = none); at
    the ends, the average of the windows that exist."""
    if windows <= 1 or probs.shape[0] <= 1:
        return probs
    if windows % 2 == 0:
        raise ValueError(f"--smooth {windows}: expected an odd number of windows")
    half = windows // 2
    padded = torch.nn.functional.pad(probs.T[None], (half, half))  # (1, K, N + 2h)
    ones = torch.nn.functional.pad(torch.ones(1, 1, probs.shape[0]), (half, half))
    kernel = torch.ones(1, 1, windows)
    sums = torch.nn.functional.conv1d(padded.transpose(0, 1), kernel)  # (K, 1, N)
    counts = torch.nn.functional.conv1d(ones, kernel)  # (1, 1, N)
    return (sums / counts)[:, 0].T


def predict_timeline(model, cfg, path: str | Path, masking, window: float, stride: float,
                     *, views_per_call: int | None = None, smooth: int = 1,
                     amp: str | None = None, timeout: float | None = None) -> Timeline:
    """Class probabilities of every window of ``path`` (see the module docstring), in
    model calls of ``views_per_call`` windows under autocast ``amp``.

    ``timeout``: seconds the decoding stream may run in all before it stops with a
    :class:`~mar.data.decode.DecodeError` (default: ``data.decode_timeout * 20``)."""
    from ..data.transforms import EvalTransform

    views_per_call = views_per_call or default_views_per_call(model_device(model))
    dc = cfg.data
    transform = EvalTransform(dc.crop_size, 1, dc.short_side, cfg.model.pixel_mean,
                              cfg.model.pixel_std)
    short = dc.short_side or dc.crop_size
    begin = time.perf_counter()
    clips: queue.Queue = queue.Queue(maxsize=2 * views_per_call)
    failure: list[BaseException] = []

    def decode() -> None:  # the producer thread: PyAV and torch both release the GIL
        try:
            for start, end, frames in stream_windows(path, window, stride, dc.num_frames,
                                                     short, timeout or dc.decode_timeout * 20):
                clips.put((start, end, transform(frames)))
        except BaseException as e:  # handed to the consumer, raised there
            failure.append(e)
        finally:
            clips.put(None)

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    starts, ends, probs = [], [], []
    done = False
    while not done:
        batch = []
        while len(batch) < views_per_call:
            item = clips.get()
            if item is None:
                done = True
                break
            batch.append(item)
        if not batch:
            break
        probs.append(score(model, torch.stack([b[2] for b in batch]), masking, amp=amp,
                           views_per_call=views_per_call))
        starts += [b[0] for b in batch]
        ends += [b[1] for b in batch]
    thread.join()
    if failure:
        raise failure[0]
    all_probs = smooth_probs(torch.cat(probs), smooth)
    return Timeline(str(path), window, stride, starts, ends, all_probs, smooth,
                    time.perf_counter() - begin)


def plot_timeline(timeline: Timeline, path: str | Path, label, classes: int = 5) -> Path:
    """A PNG of the probabilities over time of the ``classes`` classes that peak highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = timeline.probs
    shown = probs.max(0).values.topk(min(classes, probs.shape[1])).indices.tolist()
    mids = [(s + e) / 2 for s, e in zip(timeline.starts, timeline.ends, strict=True)]
    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
    for c in shown:
        ax.plot(mids, probs[:, c].numpy(), marker="o" if len(mids) < 40 else None,
                markersize=3, label=label(c))
    ax.set_xlabel("time (s), window centres")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(timeline.video).name}: windows of {timeline.window:g} s every "
                 f"{timeline.stride:g} s" + (f", smoothed over {timeline.smooth}"
                                              if timeline.smooth > 1 else ""))
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    write_file(path, save)
    plt.close(fig)
    return Path(path)


def render_timeline(timeline: Timeline, out: str | Path, label, height: int = 360) -> Path:
    """An MP4 of the video (short side ``height``) with each frame's window top-1 and its
    probability drawn on it; streamed, one frame in memory at a time."""
    import av
    from PIL import ImageDraw

    from ..data.video_writer import CONTAINERS, encode_stream

    out = Path(out)
    if out.suffix.lower() not in CONTAINERS:
        raise ValueError(f"{out}: expected one of {', '.join(CONTAINERS)}")
    top = [t[0] for t in timeline.top(1)]

    mids = [(s + e) / 2 for s, e in zip(timeline.starts, timeline.ends, strict=True)]

    def caption(t: float) -> str:
        # the window whose centre is nearest t (centres ascend: a bisection, not a scan)
        i = bisect.bisect_left(mids, t)
        k = min((j for j in (i - 1, i) if 0 <= j < len(mids)), key=lambda j: abs(mids[j] - t))
        c, p = top[k]
        return f"{t:6.1f}s  {label(c)}  {p:.0%}"

    def frames() -> Iterator[np.ndarray]:
        with av.open(timeline.video) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            size = scaled_size(stream.codec_context.width, stream.codec_context.height,
                               height)
            for i, frame in enumerate(container.decode(stream)):
                img = frame.to_image(width=size[0], height=size[1])
                draw = ImageDraw.Draw(img)
                text = caption(frame.time if frame.time is not None else i / rate)
                box = draw.textbbox((6, 6), text)
                draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4),
                               fill=(0, 0, 0))
                draw.text((6, 6), text, fill=(255, 255, 255))
                yield np.asarray(img)

    with av.open(timeline.video) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
    write_file(out, lambda tmp: encode_stream(tmp, CONTAINERS[out.suffix.lower()],
                                               frames(), fps))
    return out


def write_timeline(timeline: Timeline, out_dir: str | Path, topk: int, label, *,
                   render: bool = False) -> list[Path]:
    """``<stem>.timeline.json``, ``.csv`` and ``.png`` (and ``.mp4`` with ``render``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(timeline.video).stem}.timeline"
    files = [write_text(out_dir / f"{stem}.json",
                        json.dumps(timeline.to_json(topk, label), indent=1)),
             write_text(out_dir / f"{stem}.csv", timeline.to_csv(topk, label)),
             plot_timeline(timeline, out_dir / f"{stem}.png", label)]
    if render:
        files.append(render_timeline(timeline, out_dir / f"{stem}.mp4", label))
    return files
