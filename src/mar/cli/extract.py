"""``mar extract``: pooled encoder features (and tokens) of every video, for probes."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .options import (
    INPUTS_FAILED,
    OK,
    add_mask_ratio,
    add_model,
    add_views_per_call,
    positive_int,
    split_items,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="pooled encoder features (and tokens) of every video, for probes",
        description="Encoder features of every video of a folder or list: per video one "
        "safetensors file with the mean of the visible tokens after the encoder's final "
        "norm for each test view (clips x crops), and a manifest. Resumable; runs on "
        "several processes under torchrun (`torchrun --nproc_per_node N -m mar extract "
        "...`). Example: `mar extract videos/ --checkpoint runs/k400_mar50 --out "
        "features/`.")
    p.add_argument("items", nargs="+", metavar="LIST_OR_FOLDER [KEY=VALUE]",
                   help="folders of videos, video files and/or 'path label' lists; "
                   "KEY=VALUE items are config overrides (as --set)")
    add_model(p)
    p.add_argument("--out", required=True, help="output folder (features/ and manifest.json)")
    p.add_argument("--root", help="prefix for relative paths in list files")
    p.add_argument("--tokens", action="store_true",
                   help="also save the visible tokens (views, N_visible, D) and their indices")
    masking = p.add_mutually_exclusive_group()
    add_mask_ratio(masking)
    masking.add_argument("--all-tokens", action="store_true",
                         help="no masking: every token visible")
    p.add_argument("--clips", type=positive_int,
                   help="clips per video (default: data.test_clips)")
    p.add_argument("--crops", type=positive_int,
                   help="crops per clip (default: data.test_crops)")
    add_views_per_call(p)
    p.add_argument("--workers", type=int,
                   help="data loader workers (default: data.num_workers)")
    p.add_argument("--store-dtype", choices=["float32", "float16", "bfloat16"],
                   default="float32",
                   help="dtype of the stored features (default: %(default)s; they are "
                   "pooled in float32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..inference.extract import (
        FEATURES,
        MANIFEST,
        extract,
        list_sources,
        resolve_masking,
        settings_of,
    )
    from ..inference.load import describe_masking, load_model
    from ..runtime.device import default_views_per_call
    from ..runtime.distributed import init_distributed, shutdown

    inputs, overrides = split_items(args.items)
    if not inputs:
        raise ConfigError("extract: give a folder, video files or a list file")
    sources = list_sources(inputs, args.root)
    info = init_distributed(args.device)
    try:
        model, cfg = load_model(args.checkpoint, args.config, [*overrides, *args.set],
                                device=info.device)
        masking, masking_from = resolve_masking(cfg, args.mask_ratio, args.all_tokens)
        clips = args.clips or cfg.data.test_clips
        crops = args.crops or cfg.data.test_crops
        settings = settings_of(model, cfg, masking, masking_from, args.checkpoint,
                               clips=clips, crops=crops, tokens=args.tokens,
                               store_dtype=args.store_dtype, amp=args.amp,
                               device=info.device.type,
                               views_per_call=args.batch_size
                               or default_views_per_call(info.device))
        if info.is_main:
            print(describe_masking(masking, model.grid), file=sys.stderr)
        workers = cfg.data.num_workers if args.workers is None else args.workers
        records = extract(model, cfg, sources, args.out, settings, masking, info,
                          workers=workers)
    finally:
        shutdown()
    if records is None:
        return OK
    errors = [r for r in records if r["status"] == "error"]
    for r in errors:
        print(f"error: {r['error']}", file=sys.stderr)
    print(f"{len(records) - len(errors)} of {len(records)} videos extracted "
          f"({clips} x {crops} views each) into {Path(args.out) / FEATURES}; manifest "
          f"{Path(args.out) / MANIFEST}", file=sys.stderr)
    return INPUTS_FAILED if errors else OK
