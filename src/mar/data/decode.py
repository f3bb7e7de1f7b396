"""Video decoding: count frames without trusting the header, decode only the frames asked for.

A backend answers two questions about a video: :meth:`probe` (how many frames it really
has, found by reading the packet index, not the header) and :meth:`read` (the frames at
given indices, as uint8 (T, H, W, 3) RGB). The video is a file path, or its bytes in
memory (:class:`VideoBytes`: a member of a tar shard). Indices are positions in
presentation order, so variable frame rate needs no special case. PyAV is the default
(its wheels bundle FFmpeg); torchcodec is used where it imports and works (it needs a
system FFmpeg). PyAV decodes less than the frames it passes: it leaves unwanted
non-reference frames of H.264 and HEVC undecoded, and it probes each file once.
"""

from __future__ import annotations

import bisect
import io
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DecodeError(RuntimeError):
    """A file that cannot be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learned about a file. ``num_frames`` counts real frames (packets)."""

    num_frames: int
    header_frames: int
    fps: float
    width: int
    height: int
    keyframes: tuple[int, ...] = (0,)  # presentation indices of keyframes, ascending
    keyframe_stamps: tuple[int, ...] = ()  # their timestamps (stream time base)
    end_time: float = 0.0  # seconds: the last frame's timestamp plus one frame (0: unknown)
    # every frame's timestamp, ascending, where frames are found by it and unwanted
    # non-reference frames skipped (:func:`skips_nonref`); empty: frames are counted
    stamps: tuple[int, ...] = ()


@dataclass(frozen=True)
class VideoBytes:
    """A video held in memory (a member of a tar shard) and the name errors give it."""

    data: bytes
    name: str = "<bytes>"

    def __str__(self) -> str:
        return self.name


def as_source(video) -> str | Path | VideoBytes:
    """A path as is; bytes as :class:`VideoBytes`."""
    return VideoBytes(bytes(video)) if isinstance(video, bytes | bytearray) else video


# FFmpeg's text-art demuxers (tty for .txt/.nfo/.asc/..., bin, xbin, idf) render any text
# file as frames of characters: FFmpeg "decodes" a text file as a video
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_SNIFF_BYTES = 4096


def refuse_text(container, path: str | Path) -> None:
    """Raise :class:`DecodeError` when an opened PyAV ``container`` is a file that FFmpeg
    only reads as text art (see :data:`TEXT_CODECS`)."""
    streams = container.streams.video
    if streams and streams[0].codec_context.name in TEXT_CODECS:
        raise DecodeError(f"{path}: not a video (FFmpeg reads it as text, format "
                          f"{container.format.name!r})")


def refuse_text_file(path: str | Path, timeout: float = 30.0) -> None:
    """Raise :class:`DecodeError` for a file FFmpeg would read as text art. Only files
    whose first 4 KiB hold no NUL byte (text, not a container) are opened to ask FFmpeg;
    anything FFmpeg cannot open is left to the decoder's own message."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    _refuse_text_head(head, str(path), path, timeout)


def _refuse_text_head(head: bytes, target, name, timeout: float) -> None:
    if b"\0" in head:
        return  # binary: every container format holds NUL bytes in its header
    import av

    try:
        container = av.open(target, timeout=timeout)
    except Exception:  # av.error.* and OSError
        return
    with container:
        refuse_text(container, name)


def check_file(path: str | Path, timeout: float = 30.0) -> None:
    """Refuse what would block or cannot be a video: missing, FIFOs, devices, empty files,
    text files (which FFmpeg would render as video, :func:`refuse_text_file`)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DecodeError(f"{path}: cannot open ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise DecodeError(f"{path}: empty file")
    try:
        refuse_text_file(path, timeout)
    except OSError as e:
        raise DecodeError(f"{path}: cannot open ({e.strerror})") from None


def check_bytes(video: VideoBytes, timeout: float = 30.0) -> None:
    """What :func:`check_file` refuses, for a video in memory: empty, or text."""
    if not video.data:
        raise DecodeError(f"{video}: empty file")
    _refuse_text_head(video.data[:_SNIFF_BYTES], io.BytesIO(video.data), video, timeout)


def _checked(video, timeout: float):
    """What the decoder opens: the path as a string, or the bytes (file checks first)."""
    if isinstance(video, VideoBytes):
        check_bytes(video, timeout)
        return video.data
    check_file(video, timeout)
    return str(video)


class PyAVBackend:
    """Decoding with PyAV: seek to the keyframe before the first wanted frame, decode on.

    ``skip_nonref``: where the probe kept every frame's timestamp (:func:`skips_nonref`),
    frames are found by timestamp and each packet that is neither wanted nor a keyframe is
    decoded with FFmpeg's ``skip_frame="NONREF"``: a non-reference frame is never decoded
    from, so dropping it leaves every other frame's pixels as they were (tested). Where
    the decoder's output does not carry the probe's timestamps in order, the frames are
    counted instead, as without it. ``probe_cache``: the probes of the last that many
    files are kept (keyed by path, inode, size and modification times: a changed file is
    probed again; a video in memory is never kept), so a worker probes a file once while
    it stays in the cache; an H.264 probe holds 36 bytes a frame (11 KB for 10 s at 30
    fps).
    """

    name = "pyav"

    def __init__(self, timeout: float = 30.0, *, skip_nonref: bool = True,
                 probe_cache: int = 1024):
        self.timeout, self.skip_nonref, self.probe_cache = timeout, skip_nonref, probe_cache
        self._probes: OrderedDict[tuple, VideoInfo] = OrderedDict()  # least recent first

    def _open(self, path):
        import av

        target = _checked(as_source(path), self.timeout)
        if isinstance(target, bytes):
            target = io.BytesIO(target)
        try:
            container = av.open(target, timeout=self.timeout)
        except Exception as e:  # av.error.* and OSError
            if "Immediate exit" in str(e):  # FFmpeg's I/O interrupt: the timeout fired
                raise DecodeError(f"{path}: opening took over {self.timeout:g}s") from None
            raise DecodeError(f"{path}: cannot open as video ({_short(e)})") from None
        try:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            refuse_text(container, path)  # also binary text art (.bin, .xb, .idf)
        except DecodeError:
            container.close()
            raise
        return container

    def probe(self, path) -> VideoInfo:
        path = as_source(path)
        key = self._cache_key(path)
        info = self._probes.pop(key, None) if key else None  # pop and put back: no lock
        if info is None:
            info = self._probe(path)
        if key:
            self._probes[key] = info  # the most recent
            while len(self._probes) > self.probe_cache:
                self._probes.popitem(last=False)
        return info

    def _cache_key(self, path) -> tuple | None:
        if self.probe_cache <= 0 or isinstance(path, VideoBytes):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # the probe says why
        return (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                st.st_ctime_ns)

    def _probe(self, path) -> VideoInfo:
        deadline = time.monotonic() + self.timeout
        with self._open(path) as container:
            stream = container.streams.video[0]
            stamps, key_stamps, named = [], [], True
            try:
                for packet in container.demux(stream):
                    if time.monotonic() > deadline:
                        raise DecodeError(f"{path}: probing took over {self.timeout:g}s")
                    if packet.size == 0:
                        continue
                    named = named and packet.pts is not None
                    ts = packet.pts if packet.pts is not None else packet.dts
                    ts = len(stamps) if ts is None else ts
                    stamps.append(ts)
                    if packet.is_keyframe:
                        key_stamps.append(ts)
            except DecodeError:
                raise
            except Exception:  # a damaged tail: keep what was indexed
                pass
            order = sorted(stamps)
            # timestamps name frames where each packet has its own; B-frames (packets out
            # of presentation order) are what there is to skip, and show the timestamps
            # are not decode-order counters (H.264 in AVI)
            by_stamp = named and len(set(order)) == len(order) and order != stamps \
                and skips_nonref(stream.codec_context)
            keys = sorted({(bisect.bisect_left(order, ts), ts) for ts in key_stamps})
            rate = stream.average_rate or stream.guessed_rate or 0
            end = 0.0
            if order and stream.time_base is not None:
                end = float(order[-1] * stream.time_base) + (1 / float(rate) if rate else 0)
            return VideoInfo(len(stamps), int(stream.frames or 0), float(rate),
                             stream.codec_context.width, stream.codec_context.height,
                             tuple(k for k, _ in keys) or (0,), tuple(t for _, t in keys),
                             max(end, 0.0), tuple(order) if by_stamp else ())

    def read(self, path, indices, info: VideoInfo | None = None,
             short_side: int | None = None) -> np.ndarray:
        """Frames ``indices`` as uint8 (T, H, W, 3); with ``short_side``, scaled by the
        decoder's own scaler (FFmpeg's swscale, area averaging) so that the shorter side
        is that long: full-size frames never reach Python."""
        path = as_source(path)
        info = info or self.probe(path)
        if info.num_frames == 0:
            raise DecodeError(f"{path}: no video frames")
        indices = [min(max(int(i), 0), info.num_frames - 1) for i in indices]
        wanted = sorted(set(indices))
        if not wanted:
            raise ValueError("no frame indices to read")
        size = scaled_size(info.width, info.height, short_side) if short_side else None
        frames = self._decode(path, wanted, info, size)
        missing = [i for i in wanted if i not in frames]
        if not frames or len(missing) > len(wanted) // 4:
            raise DecodeError(f"{path}: {len(missing)} of {len(wanted)} requested frames "
                              "do not decode")
        # indices past the end were clamped to the last frame; a few indexed frames that do
        # not decode (a damaged tail) repeat the last good one
        return np.stack([frames[i] if i in frames else frames[_nearest(frames, i)]
                         for i in indices])

    def _decode(self, path, wanted: list[int], info: VideoInfo,
                size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
        """Decode from the last keyframe at or before the first wanted frame, skipping
        non-reference frames where the probe kept timestamps. Counted in output order
        where that does not give every wanted frame; from the start of the file where the
        seek lands anywhere but that keyframe."""
        k = bisect.bisect_right(info.keyframes, wanted[0]) - 1
        seek = k >= 0 and info.keyframes[k] > 0 and k < len(info.keyframe_stamps)
        start, stamp = (info.keyframes[k], info.keyframe_stamps[k]) if seek else (0, None)
        if self.skip_nonref and info.stamps and len(info.stamps) == info.num_frames:
            frames = self._decode_from(path, wanted, start, stamp, size, info.stamps)
            if frames is not None and len(frames) == len(wanted):
                return frames
        if stamp is not None:
            frames = self._decode_from(path, wanted, start, stamp, size)
            if frames is not None:
                return frames
        return self._decode_from(path, wanted, 0, None, size)

    def _decode_from(self, path, wanted, start: int, stamp: int | None,
                     size: tuple[int, int] | None = None, stamps: tuple[int, ...] = ()):
        """The frames ``wanted`` decoded from the keyframe at presentation index ``start``
        and timestamp ``stamp`` (None: from the start of the file), counted in the
        decoder's output order or, given the probe's ``stamps``, found by timestamp with
        unwanted non-reference frames skipped. None where the first frame out is not that
        keyframe (the seek landed elsewhere) or, with ``stamps``, where the output's
        timestamps are not the probe's in ascending order (they do not name frames)."""
        from av.video.reformatter import VideoReformatter

        scale = {} if size is None else {"width": size[0], "height": size[1],
                                         "interpolation": "AREA"}
        # one converter for the clip: FFmpeg's scaler is set up once, not once a frame
        # (a frame's own to_ndarray builds a new one: 0.26 ms of a 0.42 ms conversion)
        rgb = VideoReformatter()
        deadline = time.monotonic() + self.timeout
        frames: dict[int, np.ndarray] = {}
        targets = set(wanted)
        keep = {stamps[i] for i in wanted} if stamps else None
        with self._open(path) as container:
            stream = container.streams.video[0]
            threads = decoder_threads()
            if threads:
                stream.thread_count = threads
            else:
                stream.thread_type = "AUTO"
            if stamp is not None:
                try:
                    container.seek(stamp, stream=stream, backward=True, any_frame=False)
                except Exception:
                    return None
            index = start - 1
            try:
                for n, frame in enumerate(decoded(container, stream, keep)):
                    if time.monotonic() > deadline:
                        raise DecodeError(f"{path}: decoding took over {self.timeout:g}s")
                    if n == 0 and stamp is not None and frame.pts != stamp:
                        return None  # the seek did not land on the keyframe
                    if keep is None:
                        index += 1
                    else:
                        j = len(stamps) if frame.pts is None else \
                            bisect.bisect_left(stamps, frame.pts)
                        if j == len(stamps) or stamps[j] != frame.pts or j <= index:
                            return None
                        index = j
                    if index in targets:
                        frames[index] = rgb.reformat(frame, format="rgb24",
                                                     **scale).to_ndarray()
                    if index >= wanted[-1]:
                        break
            except DecodeError:
                raise
            except Exception as e:
                if not frames:
                    raise DecodeError(f"{path}: decoding failed ({_short(e)})") from None
        return frames


# decoders whose non-reference frames no later frame is decoded from (``skip_frame`` NONREF
# drops exactly those): H.264 (nal_ref_idc 0); HEVC's sub-layer non-reference pictures
# with one temporal layer. Not MPEG-4 Part 2: its AVIs pack B-frames with shuffled
# timestamps. VP9, AV1 and Cinepak have no such frames to skip.
NONREF_CODECS = frozenset({"h264", "hevc"})


def skips_nonref(codec_context) -> bool:
    """Whether dropping the non-reference frames of this stream (PyAV codec context)
    leaves every other frame as it was. HEVC: only with one temporal layer, as its hvcC
    header (ISO/IEC 14496-15, byte 21) states: a higher layer may predict from a lower
    layer's non-reference picture."""
    name = codec_context.name
    if name != "hevc":
        return name in NONREF_CODECS
    extra = codec_context.extradata or b""
    return len(extra) > 22 and extra[0] == 1 and (extra[21] >> 3) & 7 == 1


def decoded(container, stream, keep: set[int] | None = None):
    """The decoder's frames of ``stream``; given ``keep`` (timestamps), each packet that
    is neither one of them nor a keyframe is decoded with ``skip_frame="NONREF"`` (FFmpeg
    drops it if no other frame refers to it). Frame threads copy the setting per packet."""
    context = stream.codec_context
    for packet in container.demux(stream):
        if keep is not None:
            wanted = packet.pts in keep or packet.is_keyframe
            context.skip_frame = "DEFAULT" if wanted else "NONREF"
        yield from context.decode(packet)


class TorchCodecBackend:
    """Decoding with torchcodec (exact seek mode builds a frame index from the file)."""

    name = "torchcodec"

    def __init__(self, timeout: float = 30.0):
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (raises if unusable)

        self.timeout = timeout

    def _decoder(self, path):
        from torchcodec.decoders import VideoDecoder

        path = as_source(path)
        target = _checked(path, self.timeout)
        try:
            decoder = VideoDecoder(target, seek_mode="exact", dimension_order="NHWC")
        except Exception as e:
            raise DecodeError(f"{path}: cannot open as video ({_short(e)})") from None
        if getattr(decoder.metadata, "codec", None) in TEXT_CODECS:
            raise DecodeError(f"{path}: not a video (FFmpeg reads it as text, codec "
                              f"{decoder.metadata.codec!r})")
        return decoder

    def probe(self, path) -> VideoInfo:
        meta = self._decoder(path).metadata
        n = int(meta.num_frames or 0)
        return VideoInfo(n, int(meta.num_frames_from_header or 0),
                         float(meta.average_fps or 0), int(meta.width or 0),
                         int(meta.height or 0), (0,))

    def read(self, path, indices, info: VideoInfo | None = None,
             short_side: int | None = None) -> np.ndarray:
        frames = self._read(as_source(path), indices)
        if short_side is None:
            return frames
        import torch
        import torch.nn.functional as F

        h, w = frames.shape[1:3]
        new_w, new_h = scaled_size(w, h, short_side)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        video = F.interpolate(video, size=(new_h, new_w), mode="area")
        return video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def _read(self, path, indices) -> np.ndarray:
        decoder = self._decoder(path)
        n = len(decoder)
        if n == 0:
            raise DecodeError(f"{path}: no video frames")
        indices = [min(max(int(i), 0), n - 1) for i in indices]
        try:
            return decoder.get_frames_at(indices=indices).data.numpy()
        except Exception:
            pass
        # a frame the index promised but the stream does not hold: decode one by one and
        # repeat the last good frame, as PyAV does, unless too many are missing
        frames = {}
        for i in sorted(set(indices)):
            try:
                frames[i] = decoder.get_frame_at(i).data.numpy()
            except Exception:
                continue
        missing = len(set(indices)) - len(frames)
        if not frames or missing > len(set(indices)) // 4:
            raise DecodeError(f"{path}: {missing} of {len(set(indices))} requested frames "
                              "do not decode")
        return np.stack([frames[i] if i in frames else frames[_nearest(frames, i)]
                         for i in indices])


def decoder_threads() -> int:
    """FFmpeg threads for one decode: 0, FFmpeg picks (frame and slice threads), in a
    DataLoader worker too: one thread per worker gave fewer clips per CPU-second on
    Kinetics- and SSv2-like video (docs/data.md, lever (a); bench_loader.py patches this
    function to measure it)."""
    return 0


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect kept (the longer
    side truncated, as torchvision's ``resize([short_side])``)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def _nearest(frames: dict[int, np.ndarray], i: int) -> int:
    keys = sorted(frames)
    return keys[max(0, bisect.bisect_right(keys, i) - 1)]


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


BACKENDS = {"pyav": PyAVBackend, "torchcodec": TorchCodecBackend}


def available_backends() -> list[str]:
    """Backends that import and work on this machine, in order of preference."""
    found = []
    for name, cls in BACKENDS.items():
        try:
            cls()
            found.append(name)
        except Exception:
            continue
    return found


def make_backend(name: str = "auto", timeout: float = 30.0):
    """``pyav``, ``torchcodec`` or ``auto``: the first that works, in the order of
    :data:`BACKENDS`. PyAV comes first: it is always installed, it was as fast as
    torchcodec on our benchmark (docs/benchmarks.md), and torchcodec 0.17 numbers the
    frames of AVI files with packed B-frames one off from the decoder's output order."""
    if name == "auto":
        name = available_backends()[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown decoder backend {name!r}; known: auto, {', '.join(BACKENDS)}")
    try:
        return BACKENDS[name](timeout=timeout)
    except Exception as e:  # ImportError, or torchcodec without a usable FFmpeg
        raise ValueError(f"decoder backend {name!r} is not usable here ({_short(e)})") from None
