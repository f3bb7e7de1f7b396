"""The served model: loaded once, it turns an uploaded file into the config's test views
and a batch of views into class probabilities, exactly as ``mar predict`` does.

Decoding (:meth:`ServedModel.decode`) runs in a thread pool, one upload per thread; the
model (:meth:`ServedModel.scores`) runs in the micro-batcher's single thread on views
stacked from several uploads. MAR's evaluation mask is deterministic and keeps a fixed
number of tokens, so views of any upload stack into one batch without padding.

A timeline (:meth:`ServedModel.timeline`, ``mar predict --window``'s
:func:`mar.inference.timeline.predict_timeline`) runs in a decode-pool thread, outside the batcher.
The model's forward pass reads its weights and changes no state, so two threads calling
it would compute the right numbers; every call still takes :attr:`ServedModel.lock`, so
the model runs one batch at a time as the batcher assumes (no two batches competing for
the cores or the device's memory). The lock is taken per model call, so the batcher and
a timeline take turns batch by batch: a timeline never holds the batcher up for more
than one of its batches.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..data import DecodeError, VideoRecord, make_backend, read_class_names
from ..data.windows import window_starts
from ..flops import model_cost
from ..inference.load import describe_masking, eval_masking, load_model
from ..inference.runtime import runtime_device, runtime_model
from ..inference.score import score
from ..inference.timeline import Timeline, predict_timeline
from ..inference.visualize import reconstruct
from ..masking import Mask
from ..runtime.device import model_device


class VideoTooLong(ValueError):
    """An upload with more frames than the server accepts (``--max-frames``)."""


class VideoTooLarge(ValueError):
    """An upload whose frames are larger than the server accepts (``--max-frame-pixels``,
    width x height) or which decodes more pixels in all than it accepts (``--max-pixels``,
    width x height x frames)."""


class InvalidTimeline(ValueError):
    """A window/stride that this video and the server's limits do not allow."""


class TimelineTimeout(TimeoutError):
    """A timeline that did not finish within its time budget."""


@dataclass(frozen=True)
class DecodedVideo:
    """An upload's test views, ``(V, C, T, H, W)`` normalised, and what the probe saw
    (``duration``: seconds to the end of the last frame, from the packets' timestamps)."""

    views: Tensor
    frames: int
    fps: float
    width: int
    height: int
    duration: float = 0.0


class ServedModel:
    """A model loaded with :func:`mar.inference.load_model` plus what a response reports:
    class names, the test-time masking line, GFLOPs per view and the views per video."""

    def __init__(self, checkpoint: str | Path, config: str | Path | None = None,
                 overrides: list[str] = (), class_names: str | Path | None = None,
                 mask_ratio: float | None = None, device: str = "auto",
                 decode_timeout: float | None = None, amp: str = "none",
                 runtime: str = "torch", int8: bool = False,
                 views_per_call: int | None = None):
        self.model, self.cfg = load_model(checkpoint, config, list(overrides),
                                          device=runtime_device(device, runtime, int8))
        self.device = model_device(self.model)
        self.amp = amp
        self.lock = threading.Lock()  # one model call at a time (module docstring)
        self.checkpoint = str(checkpoint)
        self.masking = eval_masking(self.cfg, mask_ratio)
        # what classifies: the model, or its masked graph on another runtime (pictures
        # and the decoder still use the model); `mar serve` passes its --runtime (default
        # auto, measured at the batcher's largest batch: ``views_per_call``)
        self.runner = runtime_model(self.model, self.masking, checkpoint, runtime,
                                    int8=int8, amp=amp, views_per_call=views_per_call)
        self.runtime = "torch" if self.runner is self.model else self.runner.name
        names = class_names or self.cfg.data.class_names
        self.names = read_class_names(names) if names else None
        dc = self.cfg.data
        if decode_timeout is not None and decode_timeout < dc.decode_timeout:
            self.cfg = self.cfg.model_copy(update={"data": dc.model_copy(
                update={"decode_timeout": decode_timeout})})
        self.backend = make_backend(dc.backend, self.cfg.data.decode_timeout)
        self.num_views = dc.test_clips * dc.test_crops
        mask = self.mask(1)
        spec = self.cfg.model.model_dump()
        self.gflops = model_cost(spec.pop("name"), self.masking, **spec).gflops
        self.masking_info = {"name": "none" if mask.num_masked == 0 else self.masking.name,
                             "ratio": self.masking.ratio if mask.num_masked else 0.0,
                             "visible_tokens": mask.num_visible, "tokens": mask.num_tokens,
                             "line": describe_masking(self.masking, self.model.grid)}

    @property
    def view_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one view."""
        pe = self.model.encoder.patch_embed
        t, h, w = self.model.grid
        return (pe.proj.in_channels, t * pe.tubelet_size, h * pe.patch_size, w * pe.patch_size)

    def mask(self, batch: int) -> Mask:
        return self.masking(batch, self.model.grid, train=False)

    def label(self, c: int) -> str | None:
        return self.names[c] if self.names and c < len(self.names) else None

    def decode(self, path: str | Path, max_frames: int, max_pixels: int | None = None,
               max_frame_pixels: int | None = None) -> DecodedVideo:
        """The test views of the file at ``path`` (``test_clips x test_crops``, clip-major)
        made by ``mar predict``'s own loader (:meth:`mar.config.Config.views_dataset`:
        one probe, the frames of all clips decoded in one pass, scaled by the decoder).

        Raises :class:`DecodeError` for a file that is not a decodable video (text files
        included: the decoding layer refuses them, :func:`mar.data.decode.refuse_text_file`)
        and :class:`VideoTooLong` past ``max_frames`` (counted from the packets by a
        probe, before anything is decoded); :class:`VideoTooLarge` for frames of more than
        ``max_frame_pixels`` (width x height) or more than ``max_pixels`` decoded in all
        (width x height x frames), from the same probe, before anything is decoded (None:
        no limit)."""
        info = self.backend.probe(path)
        if info.num_frames == 0:
            raise DecodeError(f"{path}: no video frames")
        if info.num_frames > max_frames:
            seconds = f" ({info.num_frames / info.fps:.0f} s)" if info.fps else ""
            raise VideoTooLong(f"{path}: {info.num_frames} frames{seconds}, over the limit "
                               f"of {max_frames} (--max-frames)")
        area = info.width * info.height
        if max_frame_pixels is not None and area > max_frame_pixels:
            raise VideoTooLarge(f"{path}: {info.width}x{info.height} frames ({area:,} "
                                f"pixels each), over the limit of {max_frame_pixels:,} "
                                "(--max-frame-pixels)")
        if max_pixels is not None and area * info.num_frames > max_pixels:
            raise VideoTooLarge(f"{path}: {info.num_frames} frames of {info.width}x"
                                f"{info.height} ({area * info.num_frames:,} pixels to "
                                f"decode), over the limit of {max_pixels:,} (--max-pixels)")
        dc = self.cfg.data
        item = self.cfg.views_dataset([VideoRecord(str(path), 0)], dc.test_clips,
                                      dc.test_crops)[0]
        if not item["valid"]:
            raise DecodeError(item["error"])
        duration = info.end_time or (info.num_frames / info.fps if info.fps else 0.0)
        return DecodedVideo(item["video"], info.num_frames, info.fps, info.width,
                            info.height, duration)

    def scores(self, video: Tensor) -> Tensor:
        """(B, C, T, H, W) views -> (B, K) softmax probabilities (``mar predict``'s path,
        :func:`mar.inference.score`, all B views in one call)."""
        with self.lock:
            return score(self.runner, video, self.masking, amp=self.amp,
                         views_per_call=video.shape[0])

    def check_timeline(self, decoded: DecodedVideo, window: float, stride: float,
                       max_frames: int, max_windows: int) -> None:
        """Raise :class:`InvalidTimeline` for a window longer than the longest video the
        server takes (``max_frames`` at this video's frame rate) or a window/stride that
        makes more than ``max_windows`` windows of this video."""
        fps = decoded.fps or 25.0  # the rate the timeline's stream assumes without one
        longest = max_frames / fps
        if window > longest:
            raise InvalidTimeline(f"window: {window:g} s is longer than the longest video "
                                  f"this server takes ({max_frames} frames, --max-frames: "
                                  f"{longest:g} s at this video's {fps:g} fps)")
        count = len(window_starts(decoded.duration or decoded.frames / fps, window,
                                  stride))
        if count > max_windows:
            raise InvalidTimeline(f"stride: {count} windows of {window:g} s every "
                                  f"{stride:g} s, over the limit of {max_windows} "
                                  "(--max-windows)")

    def timeline(self, path: str | Path, window: float, stride: float, smooth: int = 1,
                 batch_size: int = 16, seconds: float = 60.0) -> Timeline:
        """``mar predict PATH --window W --stride S --smooth K`` (fp32): the per-window
        probabilities of the file at ``path``, its model calls taking :attr:`lock`.

        Raises :class:`TimelineTimeout` when it takes more than ``seconds``: the decoding
        stream stops itself at that deadline, so a request that timed out leaves no thread
        running on."""
        seconds = max(seconds, 1e-3)
        deadline = time.monotonic() + seconds
        try:
            return predict_timeline(_Locked(self.runner, self.lock), self.cfg, path,
                                    self.masking, window, stride, views_per_call=batch_size,
                                    smooth=smooth, amp=self.amp, timeout=seconds)
        except DecodeError:
            if time.monotonic() >= deadline:
                raise TimelineTimeout(f"{path}: the timeline took over {seconds:.3g} s") \
                    from None
            raise

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the model once at each batch size, so the first request pays no set-up."""
        for b in sorted(set(batch_sizes)):
            self.scores(torch.zeros(b, *self.view_shape))

    @torch.no_grad()
    def pictures(self, view: Tensor) -> dict[str, str | None]:
        """PNG data URLs of one (C, T, H, W) view: its frames, the same frames with the
        masked tokens grey, and the decoder's reconstruction (None without a decoder)."""
        mask = self.mask(1).to(self.device)
        with self.lock:
            original, masked, rebuilt = reconstruct(self.model, view[None].to(self.device),
                                                    mask, need_decoder=False)
        return {"original": png_strip(original), "masked": png_strip(masked),
                "reconstruction": png_strip(rebuilt) if rebuilt is not None else None}


class _Locked:
    """The model as :func:`predict_timeline` uses it, each model call under ``lock``."""

    def __init__(self, model, lock: threading.Lock):
        self.model, self.lock = model, lock
        self.grid = model.grid
        self.device = model_device(model)

    def classify(self, video: Tensor, mask: Mask) -> Tensor:
        with self.lock:
            return self.model.classify(video, mask)


def png_strip(frames: Tensor, max_frames: int = 8, min_height: int = 96) -> str:
    """(T, H, W, C) uint8 -> a PNG data URL of up to ``max_frames`` evenly spaced frames
    side by side, scaled up (nearest) to at least ``min_height`` pixels."""
    step = max(1, math.ceil(frames.shape[0] / max_frames))
    strip = torch.cat(list(frames[::step].cpu()), dim=1).numpy()           # (H, W * n, C)
    image = Image.fromarray(strip)
    scale = max(1, math.ceil(min_height / image.height))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
