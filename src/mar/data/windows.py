"""Windows of a long video, streamed: the sampling of ``mar predict --window``.

The windows are ``[k·S, k·S + W)`` over the whole video. Each window is one clip of
``num_frames`` frames, one per equal segment of the window (the frame at or after each
segment's centre), short side scaled by the decoder. Decoding streams: only the frames
of the windows still open are held (about ``W / S + 1`` clips of small frames), so
memory does not grow with the video's length.

The last window may run past the end: it is kept (its missing frames repeat the last
one) when at least half of it is in the video, and a video shorter than one window gives
one window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decode import DecodeError, check_file, scaled_size


@dataclass
class _Window:
    start: float
    targets: list[float]
    frames: list[np.ndarray | None] = field(default_factory=list)

    def __post_init__(self):
        self.frames = [None] * len(self.targets)

    def complete(self) -> bool:
        return all(f is not None for f in self.frames)


def window_starts(duration: float, window: float, stride: float) -> list[float]:
    """The starts of the windows :func:`stream_windows` returns for a video of
    ``duration`` seconds (the same rule, for planning and tests)."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    starts, k = [], 0
    while k * stride < duration:
        start = k * stride
        if duration - start >= window / 2 or not starts:
            starts.append(start)
        k += 1
    return starts


def stream_windows(path: str | Path, window: float, stride: float, num_frames: int,
                   short_side: int, timeout: float = 600.0
                   ) -> Iterator[tuple[float, float, np.ndarray]]:
    """Yield ``(start, end, frames)`` per window, in order; ``frames`` is uint8
    (num_frames, H, W, 3) with the short side ``short_side``."""
    import av

    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    check_file(path)
    deadline = time.monotonic() + timeout
    step = window / num_frames
    try:
        container = av.open(str(path))
    except Exception as e:
        raise DecodeError(f"{path}: cannot open ({type(e).__name__})") from None
    with container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        size = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
        pending: list[_Window] = []
        next_start, emitted, last, last_time = 0.0, 0, None, 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if time.monotonic() > deadline:
                    raise DecodeError(f"{path}: decoding took over {timeout:g}s")
                t = frame.time if frame.time is not None else index / rate
                while next_start <= t:
                    pending.append(_Window(next_start, [next_start + (k + 0.5) * step
                                                        for k in range(num_frames)]))
                    next_start = (len(pending) + emitted) * stride
                last = frame.to_ndarray(format="rgb24", width=size[0], height=size[1],
                                        interpolation="AREA")
                last_time = t
                for w in pending:
                    for k, target in enumerate(w.targets):
                        if w.frames[k] is None and target <= t + 0.5 / rate:
                            w.frames[k] = last
                while pending and pending[0].complete():
                    w = pending.pop(0)
                    emitted += 1
                    yield w.start, w.start + window, np.stack(w.frames)
        except DecodeError:
            raise
        except Exception as e:
            if last is None:
                raise DecodeError(f"{path}: decoding failed ({type(e).__name__})") from None
        if last is None:
            raise DecodeError(f"{path}: no video frames")
        duration = last_time + 1 / rate
        for w in pending:  # the tail: windows that run past the end
            if duration - w.start >= window / 2 or emitted == 0:
                emitted += 1
                frames = [f if f is not None else last for f in w.frames]
                yield w.start, min(w.start + window, duration), np.stack(frames)
