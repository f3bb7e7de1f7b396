"""The HTTP application of ``mar serve``: routes, limits, errors, start-up and shutdown.

Routes: ``POST /v1/predict`` (multipart upload -> top-k JSON; with ``window`` and
``stride`` also the per-window timeline of ``mar predict --window``), ``GET /healthz``
(the process answers), ``GET /readyz`` (the model is loaded and warmed up),
``GET /metrics`` (Prometheus text), ``GET /`` (the web page). Every error is JSON,
``{"error": CODE, "detail": ONE LINE}``, with its status: 401 bad or missing token, 408
upload not received within ``--upload-timeout-s``, 413 upload too large or video too
long or too large (frames, pixels per frame, pixels in all), 422 missing or bad field or
not a decodable video, 429 too many uploads in progress or too many requests at the
model, 500 an internal error (a generic detail and a ``request_id``; the log has the
exception under that id), 503 loading or shutting down, 504 past the request timeout.
Every response carries its request id in the ``X-Request-ID`` header.

A request goes: admission (token, readiness, ``Content-Length``, the bound on uploads in
progress; before the body is read) -> upload (size-limited while it is received, and
within the upload deadline) -> a model slot (the in-flight bound, ``--queue-size``:
taken only once the whole body is in, so slow uploads never hold one) -> decode (thread
pool; the probe's frame count and size are checked before anything is decoded) ->
micro-batcher (one model thread) -> answer. A timeline runs after the decode, in the
same decode thread, outside the batcher (a stream of windows,
:meth:`ServedModel.timeline`); its model calls and the batcher's take turns under one
lock. The model loads in a background thread so ``/healthz`` answers at once;
``/readyz`` and predictions wait for it. On SIGTERM/SIGINT uvicorn stops accepting
connections and lets requests in flight finish; then the batcher drains.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data import DecodeError
from .batcher import BatcherClosed, MicroBatcher
from .metrics import CONTENT_TYPE, ServeMetrics
from .predictor import (
    DecodedVideo,
    InvalidTimeline,
    ServedModel,
    TimelineTimeout,
    VideoTooLarge,
    VideoTooLong,
)

log = logging.getLogger("mar.serve")
PROTECTED = ("/v1/predict", "/metrics")   # need the bearer token when one is set


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``mar serve`` is started with (the CLI flags; defaults documented in
    docs/serve.md)."""

    checkpoint: str
    config: str | None = None
    overrides: tuple[str, ...] = ()
    class_names: str | None = None
    mask_ratio: float | None = None
    device: str = "auto"
    amp: str = "none"
    runtime: str = "auto"           # what runs the model (mar.inference.runtime)
    int8: bool = False
    token: str | None = None
    max_batch_size: int = 16        # views per model call
    max_wait_ms: float = 10.0       # how long the first request of a batch waits for others
    max_upload_mb: float = 100.0
    max_frames: int = 9000          # 5 minutes at 30 fps
    max_pixels: int = 1920 * 1080 * 9000  # width x height x frames: --max-frames at 1080p
    max_frame_pixels: int = 3840 * 2160   # width x height: 4K UHD
    upload_timeout_s: float = 60.0  # admission -> the whole body received
    max_uploads: int = 64           # uploads being received at once
    timeout_s: float = 60.0         # end of upload -> answer
    queue_size: int = 32            # prediction requests at the model (decode, queue, model)
    decode_workers: int = 2
    topk: int = 5
    max_windows: int = 1000         # windows per timeline request

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def error(status: int, code: str, detail: str, headers: dict | None = None,
          **extra) -> JSONResponse:
    """The JSON body of every error: ``{"error": code, "detail": detail}`` (and
    ``extra``'s fields)."""
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status,
                        headers=headers)


def upload_too_large(settings: ServeSettings) -> JSONResponse:
    return error(413, "upload_too_large", f"the upload is over the limit of "
                 f"{settings.max_upload_mb:g} MiB (--max-upload-mb)")


def busy(count: int, what: str, flag: str) -> JSONResponse:
    return error(429, "busy", f"{count} {what} already ({flag}); retry shortly",
                 {"Retry-After": "1"})


class UploadTimeout(Exception):
    """The body of a request did not arrive within ``--upload-timeout-s``."""


class ServerState:
    """What the routes share: the settings, the model and batcher once loaded, metrics."""

    def __init__(self, settings: ServeSettings,
                 on_load_error: Callable[[Exception], None] | None = None):
        self.settings = settings
        self.on_load_error = on_load_error
        self.served: ServedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None   # for the log; clients get not_ready_detail
        self.closing = False
        self.inflight = 0    # requests holding a model slot (--queue-size)
        self.uploads = 0     # requests whose body is being received (--max-uploads)
        self.metrics = ServeMetrics(lambda: self.batcher.depth if self.batcher else 0)
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers,
                                              thread_name_prefix="mar-decode")

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.closing

    def not_ready_detail(self) -> str:
        """Why the server does not predict, for a client: no paths, no exception text
        (the log has the load error)."""
        if self.closing:
            return "the server is shutting down"
        if self.load_error is not None:
            return "the model failed to load (the server's log says why)"
        return "the model is still loading (see GET /readyz)"

    def count_uploads(self, change: int) -> None:
        self.uploads += change
        self.metrics.uploads.set(self.uploads)

    def count_inflight(self, change: int) -> None:
        self.inflight += change
        self.metrics.inflight.set(self.inflight)

    def load(self) -> None:
        """Load and warm up the model, then start the batcher (in a background thread)."""
        s = self.settings
        try:
            start = time.perf_counter()
            served = ServedModel(s.checkpoint, s.config, list(s.overrides), s.class_names,
                                 s.mask_ratio, s.device, decode_timeout=s.timeout_s,
                                 amp=s.amp, runtime=s.runtime, int8=s.int8,
                                 views_per_call=s.max_batch_size)
            served.warm_up((1, s.max_batch_size))
            self.served = served
            self.batcher = MicroBatcher(served.scores, s.max_batch_size, s.max_wait_ms / 1000,
                                        on_batch=self.metrics.on_batch)
            self.metrics.ready.set(1)
            log.info("%s: ready in %.1f s; %s; %.3f GFLOPs per view, %d views per video",
                     s.checkpoint, time.perf_counter() - start, served.masking_info["line"],
                     served.gflops, served.num_views)
        except Exception as e:
            self.load_error = f"{s.checkpoint}: {e}"
            log.error("could not load the model: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(e)

    def close(self) -> None:
        """Stop taking work, finish what was submitted, free the threads."""
        self.closing = True
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.close()
        self.decode_pool.shutdown(wait=True)


def request_id(request: Request) -> str:
    """The id :class:`Admission` gave this request (``X-Request-ID``)."""
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


class Admission:
    """ASGI middleware: a request id for every request (``X-Request-ID``); for
    predictions, the checks made before the body is read (bearer token, readiness,
    ``Content-Length``, the bound on uploads in progress), the upload deadline, and the
    per-status count."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        outer_send = send

        async def send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", rid.encode())]}
            await outer_send(message)

        if scope["path"] not in PROTECTED:
            return await self.app(scope, receive, send)
        if scope["path"] != "/v1/predict":
            return await self._authorized(scope, receive, send, self.app)
        codes = []

        async def counting_send(message):
            if message["type"] == "http.response.start":
                codes.append(message["status"])
            await send(message)

        failed = False
        try:
            await self._authorized(scope, receive, counting_send, self._admit)
        except Exception:
            failed = True   # answered 500 by the exception handler, outside this middleware
            raise
        finally:
            code = codes[0] if codes else 500 if failed else 499
            self.state.metrics.requests.labels(str(code)).inc()

    async def _authorized(self, scope, receive, send, app):
        token = self.state.settings.token
        if token:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                what = "missing" if not given else "wrong"
                response = error(401, "unauthorized", f"{what} bearer token (send "
                                 "'Authorization: Bearer TOKEN')",
                                 {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await app(scope, receive, send)

    async def _admit(self, scope, receive, send):
        state, s = self.state, self.state.settings
        if not state.ready:
            return await error(503, "not_ready", state.not_ready_detail(),
                               {"Retry-After": "5"})(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > s.max_upload_bytes:
            # a body without Content-Length is counted as it arrives (the route's limit)
            return await upload_too_large(s)(scope, receive, send)
        if state.inflight >= s.queue_size:   # no slot would be free: spare the upload
            return await busy(s.queue_size, "requests at the model", "--queue-size")(
                scope, receive, send)
        if state.uploads >= s.max_uploads:
            return await busy(s.max_uploads, "uploads in progress", "--max-uploads")(
                scope, receive, send)
        await self._upload(scope, receive, send)

    async def _upload(self, scope, receive, send):
        """Run the app with the body received within ``--upload-timeout-s`` of now, the
        request counted as an upload until its last body message (or the deadline); past
        the deadline, whatever the app answers is replaced by 408."""
        state, s = self.state, self.state.settings
        deadline = asyncio.get_running_loop().time() + s.upload_timeout_s
        receiving, timed_out = True, False
        state.count_uploads(1)

        def upload_done():
            nonlocal receiving
            if receiving:
                receiving = False
                state.count_uploads(-1)

        async def timed_receive():
            nonlocal timed_out
            if not receiving:   # the body is in: later receives wait for a disconnect
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                upload_done()
                raise UploadTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                upload_done()   # the last body message, or the client went away
            return message

        async def guarded_send(message):
            if not timed_out:   # the app's answer to the body it could not read
                await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise
        finally:
            upload_done()
        if timed_out:
            log.info("request %s: upload not received within %g s", scope["state"]
                     ["request_id"], s.upload_timeout_s)
            await error(408, "upload_timeout", f"the upload did not arrive within "
                        f"{s.upload_timeout_s:g} s (--upload-timeout-s)",
                        {"Connection": "close"})(scope, receive, send)


@dataclass(frozen=True)
class TimelineRequest:
    """The form fields ``window``, ``stride`` (default: ``window``) and ``smooth``, as
    ``mar predict --window --stride --smooth`` takes them."""

    window: float
    stride: float
    smooth: int = 1


def timeline_request(window: float | None, stride: float | None,
                     smooth: int | None) -> TimelineRequest | None:
    """The timeline a request asks for (None without ``window``); ValueError naming the
    field for a value ``mar predict`` would refuse too."""
    if window is None:
        for name, value in (("stride", stride), ("smooth", smooth)):
            if value is not None:
                raise ValueError(f"{name}: needs window (the seconds per window of a "
                                 "timeline)")
        return None
    for name, value in (("window", window), ("stride", stride)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be a positive number of seconds, got {value:g}")
    if smooth is not None and (smooth < 1 or smooth % 2 == 0):
        raise ValueError(f"smooth: must be an odd number of windows (1, 3, 5, ...), "
                         f"got {smooth}")
    return TimelineRequest(window, stride or window, smooth or 1)


@dataclass
class Processed:
    """What the decode thread hands back: the views, and the timeline when asked."""

    decoded: DecodedVideo
    timeline: dict | None = None
    timeline_s: float = 0.0


def _safe_suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def decode_upload(served: ServedModel, file: BinaryIO, filename: str,
                  settings: ServeSettings, timeline: TimelineRequest | None = None,
                  topk: int = 5, deadline: float = math.inf) -> Processed:
    """Copy the upload to a temporary file (the decoders read paths), decode its test
    views and, when asked, compute its timeline (``mar predict --window``'s JSON, with the
    upload's name as ``video``) within ``deadline`` (``time.monotonic()``); error
    messages name the upload, not the temporary file."""
    with tempfile.NamedTemporaryFile(prefix="mar-upload-", suffix=_safe_suffix(filename)) as tmp:
        file.seek(0)
        shutil.copyfileobj(file, tmp)
        tmp.flush()
        try:
            out = Processed(served.decode(tmp.name, settings.max_frames,
                                          settings.max_pixels, settings.max_frame_pixels))
            if timeline is None:
                return out
            served.check_timeline(out.decoded, timeline.window, timeline.stride,
                                  settings.max_frames, settings.max_windows)
            start = time.perf_counter()
            tl = served.timeline(tmp.name, timeline.window, timeline.stride,
                                 timeline.smooth, settings.max_batch_size,
                                 deadline - time.monotonic())
            out.timeline_s = time.perf_counter() - start
        except (DecodeError, VideoTooLong, VideoTooLarge, TimelineTimeout) as e:
            raise type(e)(str(e).replace(tmp.name, filename)) from None
    out.timeline = tl.to_json(topk, lambda c: served.label(c) or str(c)) | {
        "video": filename}
    return out


def create_app(settings: ServeSettings,
               on_load_error: Callable[[Exception], None] | None = None) -> FastAPI:
    """The FastAPI application; the model starts loading when the app starts."""
    state = ServerState(settings, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="mar-load", daemon=True).start()
        yield
        await asyncio.to_thread(state.close)

    app = FastAPI(title="mar serve", lifespan=lifespan,
                  description="MAR action recognition over HTTP")
    app.state.serve = state
    app.add_middleware(Admission, state=state)
    page = (resources.files("mar.serve") / "static" / "index.html").read_text("utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return upload_too_large(settings)
        return error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            field = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append(f"{field}: {e.get('msg', 'invalid')}")
        hint = (" (send the video as the multipart/form-data file field 'video')"
                if any(p.startswith("video:") for p in problems) else "")
        return error(422, "invalid_request", "; ".join(problems) + hint)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # the detail stays in the log: exception text can hold paths and internals
        rid = request_id(request)
        log.error("request %s: %s %s failed: %s: %s", rid, request.method,
                  request.url.path, type(exc).__name__, exc, exc_info=exc)
        return error(500, "internal", "internal server error; the server's log has the "
                     f"detail under request id {rid}", {"X-Request-ID": rid},
                     request_id=rid)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state.ready:
            return error(503, "not_ready", state.not_ready_detail())
        served = state.served
        # what a client needs (no filesystem paths: /readyz is open even with --token)
        return {"status": "ready", "model": model_info(served),
                "masking": served.masking_info, "gflops_per_view": served.gflops,
                "views": served.num_views, "device": str(served.device),
                "limits": limits_info(settings)}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/predict", max_body_size=settings.max_upload_bytes)
    async def predict(video: Annotated[UploadFile, File(description="the video file")],
                      topk: Annotated[int, Form(description="classes to return")] = (
                          settings.topk),
                      pictures: Annotated[bool, Form(description="add PNG pictures of the "
                                          "first view: masked tokens, reconstruction")] = False,
                      window: Annotated[float | None, Form(description="seconds per window: "
                                        "add the per-window timeline, as mar predict "
                                        "--window")] = None,
                      stride: Annotated[float | None, Form(description="seconds between "
                                        "window starts (default: window)")] = None,
                      smooth: Annotated[int | None, Form(description="moving average over "
                                        "this odd number of windows (default 1)")] = None):
        served, batcher = state.served, state.batcher
        k = served.cfg.model.num_classes
        if not 1 <= topk <= k:
            return error(422, "invalid_request", f"topk: must be between 1 and {k}, "
                         f"got {topk}")
        try:
            timeline = timeline_request(window, stride, smooth)
        except ValueError as e:
            return error(422, "invalid_request", str(e))
        # the model slot: taken only now, with the whole upload received
        if state.inflight >= settings.queue_size:
            return busy(settings.queue_size, "requests at the model", "--queue-size")
        state.count_inflight(1)
        try:
            return await answer(served, batcher, video, topk, pictures, timeline)
        finally:
            state.count_inflight(-1)

    async def answer(served: ServedModel, batcher: MicroBatcher, video: UploadFile,
                     topk: int, pictures: bool, timeline: TimelineRequest | None):
        """Decode, score and answer one upload (holding a model slot)."""
        start = time.perf_counter()
        deadline = time.monotonic() + settings.timeout_s
        name = video.filename or "upload"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(settings.timeout_s):
                processed = await loop.run_in_executor(
                    state.decode_pool, decode_upload, served, video.file, name, settings,
                    timeline, topk, deadline)
                decoded = processed.decoded
                # upload copy, waiting for a decode thread, probe + decode + transform
                decode_s = time.perf_counter() - start - processed.timeline_s
                result = await asyncio.wrap_future(batcher.submit(decoded.views))
                drawn = None
                if pictures:
                    drawn = await loop.run_in_executor(state.decode_pool, served.pictures,
                                                       decoded.views[0])
        except TimeoutError:  # asyncio's, or the timeline's TimelineTimeout
            return error(504, "timeout", f"{name}: no answer within {settings.timeout_s:g} s "
                         "(--timeout-s)")
        except VideoTooLong as e:
            return error(413, "video_too_long", str(e))
        except VideoTooLarge as e:
            return error(413, "video_too_large", str(e))
        except InvalidTimeline as e:
            return error(422, "invalid_request", str(e))
        except DecodeError as e:
            return error(422, "not_a_video", str(e))
        except BatcherClosed as e:
            return error(503, "not_ready", str(e))
        total_s = time.perf_counter() - start
        probs = result.scores.mean(0)
        top = probs.topk(topk)
        rows = []
        for c, p in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            row = {"class": c, "prob": p}
            if served.label(c) is not None:
                row["name"] = served.label(c)
            rows.append(row)
        timing = {"decode": decode_s, "queue": result.queue_s, "model": result.model_s,
                  "total": total_s}
        if processed.timeline is not None:
            timing["timeline"] = processed.timeline_s
        for stage, seconds in timing.items():
            state.metrics.seconds.labels(stage).observe(seconds)
        body = {"filename": name, "top": rows, "model": model_info(served),
                "masking": served.masking_info, "gflops_per_view": served.gflops,
                "views": decoded.views.shape[0], "clips": served.cfg.data.test_clips,
                "crops": served.cfg.data.test_crops,
                "video": {"frames": decoded.frames, "fps": decoded.fps,
                          "width": decoded.width, "height": decoded.height},
                "timing_ms": {stage: 1000 * seconds for stage, seconds in timing.items()},
                "batch": {"views": result.batch_views, "requests": result.batch_requests}}
        if drawn is not None:
            body["pictures"] = drawn
        if processed.timeline is not None:
            body["timeline"] = processed.timeline
        return body

    return app


def model_info(served: ServedModel) -> dict:
    """The model as clients see it (no checkpoint path: the log has that)."""
    m = served.cfg.model
    return {"name": m.name, "head": m.head, "num_classes": m.num_classes,
            "num_frames": m.num_frames, "img_size": m.img_size,
            "decoder": served.model.decoder is not None,
            "class_names": served.names is not None, "runtime": served.runtime}


def limits_info(s: ServeSettings) -> dict:
    """The limits an upload must keep (``GET /readyz``)."""
    return {"max_upload_mb": s.max_upload_mb, "upload_timeout_s": s.upload_timeout_s,
            "max_frames": s.max_frames, "max_frame_pixels": s.max_frame_pixels,
            "max_pixels": s.max_pixels, "timeout_s": s.timeout_s}
