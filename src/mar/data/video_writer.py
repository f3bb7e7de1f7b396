"""Writing a video: H.264 in an MP4 (or MOV / MKV) container, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_file

# the container follows the name; atomic temporaries have no extension, so it is passed
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


def write_video(path: str | Path, frames: np.ndarray, fps: int = 12, crf: int = 18,
                preset: str = "veryfast") -> Path:
    """Write uint8 RGB ``frames`` (T, H, W, 3) as H.264 (yuv420p) to ``path``.

    yuv420p needs an even height and width: an odd last row or column is dropped.
    A reader of ``path`` sees the old file or the whole new one, never half of one.
    """
    path = Path(path)
    container = CONTAINERS.get(path.suffix.lower())
    if container is None:
        raise ValueError(f"{path}: unknown video extension, expected one of "
                         f"{', '.join(CONTAINERS)}")
    frames = np.asarray(frames)
    if (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8
            or frames.shape[0] < 1 or min(frames.shape[1:3]) < 2):
        raise ValueError(f"{path}: frames must be uint8 (T >= 1, H >= 2, W >= 2, 3), got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    frames = frames[:, :h, :w]
    return write_file(path, lambda tmp: _encode(tmp, container, frames, fps, crf, preset))


def _encode(path: Path, container: str, frames: np.ndarray, fps: int, crf: int,
            preset: str) -> None:
    encode_stream(path, container, iter(frames), fps, crf, preset)


def encode_stream(path: Path, container: str, frames, fps: float, crf: int = 18,
                  preset: str = "veryfast") -> int:
    """Encode an iterable of uint8 RGB frames (all the size of the first, even sides) to
    ``path`` as H.264, one frame in memory at a time; returns the frame count. Not atomic
    by itself: call it inside :func:`mar.atomic.write_file`."""
    import av

    count = 0
    with av.open(str(path), "w", format=container) as out:
        stream = None
        for img in frames:
            if stream is None:
                stream = out.add_stream("libx264", rate=round(fps) or 25)
                stream.width, stream.height = img.shape[1] // 2 * 2, img.shape[0] // 2 * 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            img = np.ascontiguousarray(img[:stream.height, :stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return count
