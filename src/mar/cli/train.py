"""``mar train`` and ``mar pretrain``: one training loop, fine-tuning or pretraining."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .options import add_device, add_set, config_and_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, text in (("train", "fine-tune (MAR or standard training)"),
                       ("pretrain", "self-supervised VideoMAE-style pretraining")):
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. "
                           "Under torchrun: `torchrun --nproc_per_node N -m mar "
                           f"{name} CONFIG --out DIR`.")
        p.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE]",
                       help="a YAML config and dotted overrides, e.g. train.epochs=10")
        add_set(p)
        p.add_argument("--out", required=True, help="the run directory")
        p.add_argument("--resume", choices=["auto", "no"], default="no",
                       help="auto: continue from the latest checkpoint in --out")
        p.add_argument("--overwrite", action="store_true",
                       help="start afresh in a non-empty --out (deletes its checkpoints)")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved config")
        add_device(p, device_default=None, amp_default=None)
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.trainer import train

    path, overrides = config_and_overrides(args)
    if args.command == "pretrain":
        overrides = ["train.task=pretrain", *overrides]
    overrides += [f"train.{k}={getattr(args, k)}" for k in ("device", "amp")
                  if getattr(args, k) is not None]
    cfg = load_config(path, overrides)
    if args.command == "train" and cfg.train.task == "pretrain":
        raise ConfigError("train.task is 'pretrain': run `mar pretrain` for pretraining")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    train(cfg, args.out, resume=args.resume == "auto", overwrite=args.overwrite)
    return 0
