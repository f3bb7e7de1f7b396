"""``mar predict``: top-k classes of video files, or a timeline of a long video."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from .options import (
    INPUTS_FAILED,
    OK,
    add_mask_ratio,
    add_model,
    add_reduce,
    add_runtime,
    add_views_per_call,
    load_for_command,
    reduced,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of video files",
                       description="Top-k classes of each video (softmax averaged over the "
                       "config's test views), or with --window a timeline of a long video. "
                       "A video that cannot be decoded is reported and the exit code is 1. "
                       "Example: `mar predict clip.mp4 videos/ --checkpoint runs/ssv2_b_mar50 "
                       "--device cuda`.")
    p.add_argument("videos", nargs="+", help="video files and/or folders of videos")
    add_model(p)
    add_runtime(p)
    p.add_argument("--class-names", help="class-name file (default: data.class_names)")
    add_mask_ratio(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true")
    add_views_per_call(p)
    p.add_argument("--workers", type=int, help="decoding processes (default: none for one "
                   "video, else up to 4, one per spare core)")
    p.add_argument("--profile", action="store_true", help="print seconds per stage")
    add_reduce(p)
    p.add_argument("--window", type=float, metavar="S",
                   help="long videos: one prediction per window of S seconds (a timeline)")
    p.add_argument("--stride", type=float, metavar="S",
                   help="with --window: seconds between window starts (default: --window)")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="with --window: average probabilities over K neighbouring windows")
    p.add_argument("--out", help="with --window: write <video>.timeline.json/.csv/.png here")
    p.add_argument("--render", action="store_true",
                   help="with --window and --out: also <video>.timeline.mp4, labels drawn on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    begin = time.perf_counter()
    from ..inference.load import describe_masking
    from ..inference.predict import Profile, find_videos, predict
    from ..runtime.device import bf16_note, model_device

    if args.render and not args.out:
        raise ConfigError("--render needs --out")
    if args.window is None and (args.stride is not None or args.render or args.smooth != 1
                                or args.out):
        raise ConfigError("--stride, --smooth, --out and --render need --window")
    videos, overrides = _videos_and_overrides(args)
    args.set = [*overrides, *args.set]
    model, cfg, masking = load_for_command(args)
    startup = time.perf_counter() - begin
    if args.reduce:
        model, masking = reduced(model, args)
        print(model.describe(), file=sys.stderr)
    else:
        print(describe_masking(masking, model.grid), file=sys.stderr)
    names = None
    if args.class_names or cfg.data.class_names:
        from ..data import read_class_names

        names = read_class_names(args.class_names or cfg.data.class_names)
    videos = find_videos(videos)
    if note := bf16_note(args.amp, model_device(model)):
        print(f"mar predict: {note}", file=sys.stderr)

    def label(c: int) -> str:
        return names[c] if names and c < len(names) else str(c)

    if args.window is not None:
        return _predict_timelines(args, model, cfg, videos, masking, label)
    profile = Profile() if args.profile else None
    results = predict(model, cfg, videos, masking, args.topk, amp=args.amp,
                      views_per_call=args.batch_size, workers=args.workers, profile=profile)
    if profile is not None:
        _print_profile(profile, startup)

    if args.json:
        print(json.dumps([{"video": r.path, "views": r.views, "error": r.error,
                           "top": [{"class": c, "name": label(c), "prob": round(p, 5)}
                                   for c, p in zip(r.classes, r.probs, strict=True)]}
                          for r in results], indent=1))
    else:
        table = Table(title=f"top-{args.topk} ({cfg.data.test_clips} x {cfg.data.test_crops} "
                      "views per video)")
        table.add_column("video")
        table.add_column("prediction")
        for r in results:
            text = r.error or ", ".join(f"{label(c)} {p:.1%}"
                                        for c, p in zip(r.classes, r.probs, strict=True))
            table.add_row(r.path, text)
        Console().print(table)
        for r in results:  # one line each on stderr, whatever the table's wrapping did
            if r.error is not None:
                print(f"mar predict: {r.error}", file=sys.stderr)
    return OK if all(r.error is None for r in results) else INPUTS_FAILED


def _videos_and_overrides(args) -> tuple[list[str], list[str]]:
    """Positional items: videos, and ``key=value`` overrides (an alias of --set)."""
    from pathlib import Path

    videos = [v for v in args.videos if "=" not in v or Path(v).exists()]
    return videos, [v for v in args.videos if v not in videos]


def _predict_timelines(args, model, cfg, videos, masking, label) -> int:
    """``mar predict --window``: a timeline per video (JSON/CSV/PNG/MP4 in ``--out``)."""
    from ..data import DecodeError
    from ..inference.timeline import predict_timeline, write_timeline

    results, failed = [], 0
    for video in videos:
        try:
            tl = predict_timeline(model, cfg, video, masking, args.window,
                                  args.stride or args.window,
                                  views_per_call=args.batch_size, smooth=args.smooth,
                                  amp=args.amp)
        except DecodeError as e:
            failed += 1
            print(f"mar predict: {e}", file=sys.stderr)
            results.append({"video": str(video), "error": str(e)})
            continue
        results.append(tl.to_json(args.topk, label))
        if args.out:
            files = write_timeline(tl, args.out, args.topk, label, render=args.render)
            print(f"wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
        if not args.json:
            table = Table(title=f"{video}: {len(tl.starts)} windows of {tl.window:g} s every "
                          f"{tl.stride:g} s ({tl.seconds:.1f} s)")
            for col in ("from s", "to s", "top-1", "mean prob"):
                table.add_column(col, justify="left" if col == "top-1" else "right")
            for start, end, c, p in tl.segments():
                table.add_row(f"{start:.1f}", f"{end:.1f}", label(c), f"{p:.1%}")
            Console().print(table)
    if args.json:
        print(json.dumps(results, indent=1))
    return INPUTS_FAILED if failed else OK


def _print_profile(p, startup: float) -> None:
    """``mar predict --profile``: seconds per stage, on stderr."""
    table = Table(title=f"mar predict --profile: {p.videos} videos, {p.views} views")
    for col in ("stage", "seconds", "per video ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    rows = [("start-up (imports, model load)", startup), ("open + probe", p.open),
            ("decode + scale", p.decode), ("crop + normalise", p.transform),
            ("model", p.model), ("predict wall time", p.wall)]
    for name, sec in rows:
        table.add_row(name, f"{sec:.3f}", f"{1000 * sec / max(p.videos, 1):.1f}")
    Console(stderr=True).print(table)
    print("open, decode and crop are summed over the loader workers: with --workers > 0 "
          "they overlap the model", file=sys.stderr)
