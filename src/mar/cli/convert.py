"""``mar convert SRC DST``: a checkpoint in any supported format to a mar model directory."""

from __future__ import annotations

import argparse
import sys

from ..convert.names import FORMAT_NAMES
from .options import USAGE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert VideoMAE / transformers / image-MAE / official MAR weights",
        description="Convert a checkpoint into a mar model directory (model.safetensors, "
        "config.json, masking.json), loading strictly and printing what happened to every "
        "key and the test-time masking recorded. Any width, depth, head count and MLP ratio "
        "converts. Example, "
        "a VideoMAE pretraining checkpoint as the start of MAR on SSv2: `mar convert "
        "checkpoint.pth mar-vitb-ssv2/ --num-classes 174 --decoder`.")
    p.add_argument("src", help="a .pth/.bin/.safetensors file or a transformers model directory")
    p.add_argument("dst", help="the mar model directory to write")
    p.add_argument("--format", choices=["auto", *FORMAT_NAMES], default="auto",
                   help="videomae (official .pth), hf (transformers), mae (image ViT/MAE), "
                   "mar (official MAR code); default: detected")
    p.add_argument("--num-classes", type=int, help="classes of the head (required when the "
                   "checkpoint has no classifier)")
    p.add_argument("--head", choices=["bridging", "linear", "mlp", "none"],
                   help="the classifier to build (default: the checkpoint's, else bridging)")
    p.add_argument("--drop-head", action="store_true",
                   help="do not load the checkpoint's classifier; start a new head")
    p.add_argument("--decoder", action=argparse.BooleanOptionalAction, default=None,
                   help="keep (or add) the reconstruction decoder; --no-decoder drops it "
                   "(default: keep it if the checkpoint has one)")
    p.add_argument("--num-frames", type=int, help="frames per clip (default: the transformers "
                   "config's, else 16)")
    p.add_argument("--img-size", type=int, help="frame size (default: the transformers "
                   "config's, else 224)")
    p.add_argument("--tubelet-size", type=int, default=2,
                   help="frames per tubelet when inflating 2-D image weights (default: 2)")
    p.add_argument("--num-heads", type=int, help="attention heads of the encoder, which the "
                   "weights do not store (default: the transformers config's, else mar's size "
                   "of that width; required for other widths)")
    p.add_argument("--decoder-heads", type=int, help="attention heads of the file's "
                   "reconstruction decoder (default: the transformers config's, else "
                   "VideoMAE's decoder of that width)")
    p.add_argument("--test-masking", choices=["none", "cell_running"],
                   help="test-time masking to record in masking.json (default: cell_running "
                   "for the official MAR code's checkpoints, none for every other source)")
    p.add_argument("--mask-ratio", type=float, help="ratio of --test-masking cell_running "
                   "(default 0.5)")
    p.add_argument("--allow-unexpected", action="store_true",
                   help="convert even if some keys of the file are used by no rule (listed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, save, print the report; on failure the keys behind it, a one-line error
    and exit code 2 (nothing written)."""
    from ..convert.convert import convert_checkpoint
    from ..convert.report import ConversionError, describe_masking
    from ..models.io import ModelFileError, save_model

    try:
        model, report = convert_checkpoint(
            args.src, format=args.format, num_classes=args.num_classes,
            drop_head=args.drop_head, decoder=args.decoder, num_frames=args.num_frames,
            img_size=args.img_size, head=args.head, tubelet_size=args.tubelet_size,
            num_heads=args.num_heads, decoder_heads=args.decoder_heads,
            test_masking=args.test_masking, mask_ratio=args.mask_ratio,
            allow_unexpected=args.allow_unexpected)
        save_model(model, report.config, args.dst, masking=report.masking,
                   overwrite=args.overwrite, report=report)
    except (ConversionError, ModelFileError, OSError) as e:
        report = getattr(e, "report", None)
        if report is not None and (report.missing or report.unexpected):
            print("\n".join(report.lines()))                # the keys behind the error
        print(f"mar convert: error: {e}", file=sys.stderr)
        return USAGE
    print("\n".join(report.lines()))
    cfg = report.config
    arch = cfg["name"]
    if "embed_dim" in cfg:
        hidden = int(cfg["embed_dim"] * cfg["mlp_ratio"])
        arch += (f" (width {cfg['embed_dim']}, depth {cfg['depth']}, {cfg['num_heads']} heads, "
                 f"MLP {hidden})")
    print(f"wrote {args.dst}: {arch}, head {cfg['head']}"
          + (f" ({cfg['num_classes']} classes)" if cfg["head"] != "none" else "")
          + (", with decoder" if cfg["decoder"] else "")
          + f", {cfg['num_frames']}x{cfg['img_size']}x{cfg['img_size']} clips, "
          f"test-time masking {describe_masking(report.masking)}")
    return 0
