"""``mar demo``: pretraining, then standard training and MAR from one encoder, on the
embedded natural benchmark, on a CPU in minutes."""

from __future__ import annotations

import argparse

from .options import add_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..demo import FULL, DemoConfig  # torch-free

    d = DemoConfig()
    p = sub.add_parser("demo", help="pretraining, then MAR vs standard training, on "
                       "synthetic videos, on a CPU")
    p.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    p.add_argument("--data", help="where the synthetic videos are cached (default: OUT/data)")
    p.add_argument("--kind", choices=("natural", "shapes"), default=d.kind,
                   help="the benchmark: motion over photographs, or drawn shapes "
                   "(default: %(default)s)")
    p.add_argument("--model", default=d.model)
    p.add_argument("--size", type=int, default=d.size, help="frame size in pixels")
    p.add_argument("--frames", type=int, default=d.num_frames)
    p.add_argument("--patch-size", type=int, default=d.patch_size)
    p.add_argument("--per-class", type=int, default=d.per_class_train,
                   help="training videos per class")
    p.add_argument("--per-class-val", type=int, default=d.per_class_val)
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help=f"`mar pretrain` epochs before fine-tuning, 0: from random weights "
                   f"(default: {d.pretrain_epochs}, --full: {FULL['pretrain_epochs']})")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of each "
                   f"arm (default: {d.epochs}, --full: {FULL['epochs']})")
    p.add_argument("--norm-target", action="store_true",
                   help="pretrain on VideoMAE's per-patch normalised pixels (default: raw "
                   "pixels, the target that learns on this benchmark: docs/results.md)")
    p.add_argument("--full", action="store_true",
                   help="the longer run: one seed of the study's Fig. 1 budget")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="data loader workers")
    add_device(p, device_default=d.device, amp_default=d.amp)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import FULL, DemoConfig, run_demo

    budget = {k: getattr(args, k) if getattr(args, k) is not None
              else FULL[k] if args.full else getattr(DemoConfig, k) for k in FULL}
    run_demo(DemoConfig(out=args.out, data=args.data, kind=args.kind, model=args.model,
                        size=args.size, num_frames=args.frames, patch_size=args.patch_size,
                        per_class_train=args.per_class, per_class_val=args.per_class_val,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        workers=args.workers, norm_target=args.norm_target,
                        device=args.device, amp=args.amp, **budget))
    return 0
