"""``mar eval``: accuracy of a trained model on a list (multi-view test by default)."""

from __future__ import annotations

import argparse
import json

from .options import (
    add_mask_ratio,
    add_model,
    add_reduce,
    add_runtime,
    load_for_command,
    reduced,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (multi-view test by default)",
                       description="Top-1/5 per view and per video, per-class accuracy and "
                       "the confusion matrix of --checkpoint on data.test_list (or "
                       "data.val_list). Under torchrun the videos are split across "
                       "processes. Example: `mar eval --checkpoint runs/ssv2_b_mar50 --set "
                       "data.test_list=lists/ssv2/val.csv`.")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [KEY=VALUE]",
                   help="a config and overrides (the same as --config and --set)")
    add_model(p, amp_default=None)
    add_runtime(p)
    add_mask_ratio(p)
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--out", help="write eval.json, confusion.csv/png, per_class.json here")
    add_reduce(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engine.evaluate import print_summary, run_eval
    from ..inference.load import describe_masking
    from ..runtime.distributed import init_distributed, shutdown

    if args.runtime not in ("torch", "auto") and args.device == "auto":
        args.device = "cpu"                       # the other runtimes run on the CPU
    info = init_distributed(args.device)
    try:
        args.device = info.device  # this process's GPU under torchrun
        model, cfg, masking = load_for_command(
            args, views_per_call=lambda cfg: cfg.eval.batch_size, info=info)
        if args.amp is not None:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
                update={"amp": args.amp})})
        out = Path(args.out) if args.out else None
        if out is not None and info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        if args.reduce:
            model, masking = reduced(model, args)
        if info.is_main:
            print(model.describe() if args.reduce else describe_masking(masking, model.grid))
        result = run_eval(cfg, model, args.split, info, out_dir=out, masking=masking)
        summary = result.summary()
        if args.reduce:
            from ..flops import reduction_flops
            from ..runtime.distributed import all_gather_objects

            counts = sum(all_gather_objects(model.counts, info), [])
            model.counts = counts
            summary |= {"reduction": model.describe(),
                        "mean_tokens": round(model.mean_kept_tokens(), 2),
                        "gflops_per_view": round(reduction_flops(model) / 1e9, 4)}
        if info.is_main:
            print_summary(summary)
            if out is not None:
                (out / "eval.json").write_text(json.dumps(summary, indent=1))
    finally:
        shutdown()
    return 0
