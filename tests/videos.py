"""Helpers that write small real video files for the tests (PyAV's bundled encoders)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REAL = Path(__file__).resolve().parent / "data" / "videos"     # tests/data/videos/README.md
# decodable frame counts measured by decoding every frame (tests/data/videos/README.md)
REAL_FRAMES = {"bigbuckbunny.mp4": 132, "Megamind.avi": 270, "Megamind_bugy.avi": 270,
               "tree.avi": 68}
REAL_HEADER = {"bigbuckbunny.mp4": 132, "Megamind.avi": 270, "Megamind_bugy.avi": 270,
               "tree.avi": 444}


def level(i: int) -> int:
    """The grey level that encodes frame i (readable back through lossy H.264)."""
    return 16 + 4 * i


def frame_index(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 16) / 4)


def write_video(path, num_frames: int = 30, size=(64, 48), fps: int = 25, gop: int = 5,
                bframes: int = 2, stamps: list[int] | None = None,
                codec: str = "libx264") -> Path:
    """An H.264 video whose frame i is a flat grey of ``level(i)``; ``stamps`` gives
    explicit presentation times in milliseconds (variable frame rate)."""
    path = Path(path)
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "bf": str(bframes), "crf": "10",
                          "sc_threshold": "0"}
        if stamps is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            img = np.full((height, width, 3), level(i), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if stamps is not None:
                frame.pts = stamps[i]
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_pattern_video(path, frames: np.ndarray, fps: int = 25) -> Path:
    """Lossless (FFV1) video of the given uint8 (T, H, W, 3) frames."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def corrupt(src: Path, dst: Path, kind: str, seed: int = 0) -> Path:
    """Damaged copies of a real file: empty, truncated, not_video, bitrot (middle third)."""
    data = Path(src).read_bytes()
    rng = np.random.default_rng(seed)
    n = len(data)
    if kind == "empty":
        data = b""
    elif kind == "truncated":
        data = data[: n * 6 // 10]
    elif kind == "not_video":
        data = b"this is a text file, not a video\n" * 200
    elif kind == "bitrot":
        data = data[: n // 3] + rng.bytes(n // 3) + data[2 * n // 3:]
    else:
        raise ValueError(kind)
    Path(dst).write_bytes(data)
    return Path(dst)


DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # right, left, down, up


def write_moving_square(path, label: int, num_frames: int = 8, size: int = 32,
                        seed: int = 0, step: int = 3) -> Path:
    """A bright square moving in direction ``DIRECTIONS[label]`` over a noisy background:
    the class is in the motion, not in any single frame."""
    rng = np.random.default_rng(seed)
    dy, dx = DIRECTIONS[label]
    side = size // 4
    travel = step * (num_frames - 1)
    y0 = rng.integers(travel if dy < 0 else 0, size - side - (travel if dy > 0 else 0) + 1)
    x0 = rng.integers(travel if dx < 0 else 0, size - side - (travel if dx > 0 else 0) + 1)
    colour = rng.integers(150, 256, 3)
    frames = rng.integers(0, 60, (num_frames, size, size, 3)).astype(np.uint8)
    for t in range(num_frames):
        y, x = y0 + dy * step * t, x0 + dx * step * t
        frames[t, y:y + side, x:x + side] = colour
    return write_pattern_video(path, frames)


def moving_square_dataset(root, per_class: int, seed: int = 0, **kwargs) -> Path:
    """``per_class`` videos of each of the 4 directions and a ``list.csv`` naming them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for label in range(len(DIRECTIONS)):
        for i in range(per_class):
            name = f"{label}_{i}.mkv"
            write_moving_square(root / name, label, seed=seed * 10_000 + label * 1000 + i,
                                **kwargs)
            lines.append(f"{name} {label}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"
