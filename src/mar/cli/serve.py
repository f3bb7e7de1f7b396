"""``mar serve``: the HTTP inference server (:mod:`mar.serve`)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from ..errors import ConfigError
from .options import add_mask_ratio, add_model, add_runtime

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DESCRIPTION = ("Serve a model over HTTP: POST /v1/predict (multipart video upload -> top-k "
               "JSON), GET /healthz, /readyz, /metrics (Prometheus), and a web page at /. "
               "Example: `mar serve --checkpoint runs/ssv2_b_mar50/best`. See docs/serve.md.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP inference server with a web page",
                       description=DESCRIPTION)
    add_model(p)
    add_runtime(p)
    p.add_argument("--class-names", help="class-name file (default: data.class_names)")
    add_mask_ratio(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--token", default=os.environ.get("MAR_SERVE_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on /v1/predict and /metrics "
                   "(default: $MAR_SERVE_TOKEN, else none)")
    p.add_argument("--max-batch-size", type=int, default=16,
                   help="views per model call (default: %(default)s; 1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=100.0,
                   help="largest upload, in MiB; larger: 413 (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=9000,
                   help="longest video, in frames; longer: 413 (default: %(default)s)")
    p.add_argument("--max-frame-pixels", type=int, default=3840 * 2160, metavar="N",
                   help="largest frame, width x height in pixels, from the probe; larger: "
                   "413 (default: %(default)s, 3840x2160)")
    p.add_argument("--max-pixels", type=int, default=1920 * 1080 * 9000, metavar="N",
                   help="most pixels one upload decodes, width x height x frames, from the "
                   "probe; more: 413 (default: %(default)s, 9000 frames of 1920x1080)")
    p.add_argument("--upload-timeout-s", type=float, default=60.0,
                   help="seconds to receive a whole upload, from its admission; later: 408 "
                   "(default: %(default)s)")
    p.add_argument("--max-uploads", type=int, default=64,
                   help="uploads being received at once; more: 429 (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="seconds from the end of an upload to its answer; later: 504 "
                   "(default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=32,
                   help="prediction requests at the model at once (decoding, queued or "
                   "running; taken after the upload); more: 429 (default: %(default)s)")
    p.add_argument("--decode-workers", type=int, default=2,
                   help="threads decoding uploads (default: %(default)s)")
    p.add_argument("--max-windows", type=int, default=1000,
                   help="most windows a timeline request (window/stride) may make; more: "
                   "422 (default: %(default)s)")
    p.add_argument("--topk", type=int, default=5,
                   help="classes per answer unless the request asks (default: %(default)s)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace):
    from ..serve.app import ServeSettings

    for flag in ("max_batch_size", "max_frames", "queue_size", "decode_workers", "topk",
                 "max_windows", "max_frame_pixels", "max_pixels", "max_uploads"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, "
                              f"got {getattr(args, flag)}")
    for flag in ("max_upload_mb", "timeout_s", "upload_timeout_s"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, "
                              f"got {getattr(args, flag)}")
    if args.max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be at least 0, got {args.max_wait_ms}")
    return ServeSettings(
        checkpoint=args.checkpoint, config=args.config, overrides=tuple(args.set),
        class_names=args.class_names, mask_ratio=args.mask_ratio, device=args.device,
        amp=args.amp, runtime=args.runtime, int8=args.int8,
        token=args.token or None, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
        max_frames=args.max_frames, max_frame_pixels=args.max_frame_pixels,
        max_pixels=args.max_pixels, upload_timeout_s=args.upload_timeout_s,
        max_uploads=args.max_uploads, timeout_s=args.timeout_s, queue_size=args.queue_size,
        decode_workers=args.decode_workers, topk=args.topk, max_windows=args.max_windows)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise RuntimeError(f"mar serve needs the 'serve' extra ({e.name} is not installed): "
                           "pip install -e \".[serve]\"") from None
    from ..inference.runtime import check_runtime
    from ..models.io import weights_file
    from ..runtime.device import resolve_device

    weights_file(args.checkpoint)  # a wrong path fails now, not in the loading thread
    resolve_device(args.device)    # and so does a device this machine lacks
    check_runtime(args.runtime, args.int8, args.amp)   # and a runtime it cannot run
    settings = settings_from(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    if args.host not in LOCAL_HOSTS and not settings.token:
        logging.getLogger("mar.serve").warning(
            "serving on %s without --token: anyone who can reach the port can use it",
            args.host)
    failed: list[Exception] = []
    server: uvicorn.Server | None = None

    def on_load_error(e: Exception) -> None:
        failed.append(e)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error)
    # requests in flight finish on shutdown: none outlasts its upload deadline and then
    # --timeout-s
    grace = math.ceil(settings.upload_timeout_s + settings.timeout_s) + 5
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=grace)
    server = uvicorn.Server(config)
    server.run()
    if failed:
        print(f"mar serve: error: could not load {args.checkpoint}: {failed[0]}",
              file=sys.stderr)
        return 2
    return 0
