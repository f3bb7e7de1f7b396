"""The ``mar extract`` parser, kept apart from :mod:`mar.extract` so that building the
CLI (``mar --help``) imports no torch."""

from __future__ import annotations

import argparse


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import cmd_extract

    return cmd_extract(args)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "extract", help="pooled encoder features (and tokens) of every video, for probes",
        description="Encoder features of every video of a folder or list: per video one "
        "safetensors file with the mean of the visible tokens after the encoder's final "
        "norm for each test view (clips x crops), and a manifest. Resumable; runs on "
        "several processes under torchrun. Example: `mar extract videos/ --checkpoint "
        "runs/k400_mar50 --out features/`.")
    p.add_argument("items", nargs="+", metavar="LIST_OR_FOLDER [key=value]",
                   help="folders of videos, video files and/or 'path label' lists; "
                   "key=value items are config overrides")
    p.add_argument("--checkpoint", required=True,
                   help="a run, checkpoint or model directory, or a .safetensors file")
    p.add_argument("--out", required=True, help="output folder (features/ and manifest.json)")
    p.add_argument("--config", help="the run's config (default: found beside the weights)")
    p.add_argument("--root", help="prefix for relative paths in list files")
    p.add_argument("--tokens", action="store_true",
                   help="also save the visible tokens (views, N_visible, D) and their indices")
    masking = p.add_mutually_exclusive_group()
    masking.add_argument("--mask-ratio", type=float,
                         help="cell running at this ratio (default: the checkpoint's "
                         "test-time masking)")
    masking.add_argument("--all-tokens", action="store_true",
                         help="no masking: every token visible")
    p.add_argument("--clips", type=int, help="clips per video (default: data.test_clips)")
    p.add_argument("--crops", type=int, help="crops per clip (default: data.test_crops)")
    p.add_argument("--batch-size", type=int,
                   help="views per forward pass (default: 4 on a CPU, 16 on a GPU)")
    p.add_argument("--workers", type=int,
                   help="data loader workers (default: data.num_workers)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="stored dtype (default: %(default)s; features are pooled in float32)")
    p.set_defaults(func=_cmd_extract)
    return p
