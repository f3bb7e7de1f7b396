"""``mar visualize``: masks (paper Fig. 3-4) and reconstructions (Fig. 6)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .options import INPUTS_FAILED, OK, add_mask_ratio, add_model, load_for_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="masks (Fig. 3-4) and reconstructions (Fig. 6)",
                       description="Draw masking strategies (--masks) and/or the original, "
                       "masked and reconstructed frames of one clip of VIDEO (needs a "
                       "--checkpoint whose weights hold the reconstruction decoder).")
    p.add_argument("video", nargs="?", help="a video to reconstruct (needs --checkpoint)")
    add_model(p, required=False)
    add_mask_ratio(p)
    p.add_argument("--masks", nargs="+", metavar="STRATEGY",
                   help="draw these masking strategies, e.g. cell_running tube random")
    p.add_argument("--grid", type=int, nargs=3, default=[8, 14, 14], metavar=("T", "H", "W"))
    p.add_argument("--train-masks", action="store_true",
                   help="draw training masks (random start states, shuffles) instead of eval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..masking import make_masking

    if not args.masks and not args.video:
        raise ConfigError("nothing to draw: give a VIDEO (with --checkpoint) and/or --masks")
    if args.video and not args.checkpoint:
        raise ConfigError("--checkpoint is needed to reconstruct a video")
    out = Path(args.out)
    if args.video:  # a bad checkpoint or device fails before anything is written
        model, cfg, masking = load_for_command(args)
    out.mkdir(parents=True, exist_ok=True)
    if args.masks:
        from ..inference.visualize import mask_picture

        grid = tuple(args.grid)
        strategies = {n: make_masking(n, args.mask_ratio if args.mask_ratio is not None
                                      else 0.5) for n in args.masks}
        path = mask_picture(strategies, grid, out / "masks.png", train=args.train_masks,
                            seed=args.seed)
        print(f"wrote {path}")
    if args.video:
        import torch

        from ..data import VideoRecord
        from ..inference.load import describe_masking
        from ..inference.visualize import reconstruct, reconstruction_figure
        from ..runtime.device import amp_dtype, model_device

        item = cfg.views_dataset([VideoRecord(args.video, 0)], 1, 1)[0]
        if not item["valid"]:
            print(f"mar visualize: {item['error']}", file=sys.stderr)
            return INPUTS_FAILED
        print(describe_masking(masking, model.grid))
        device = model_device(model)
        mask = masking(1, model.grid, train=False).to(device)
        dtype = amp_dtype(args.amp, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            clips = reconstruct(model, item["video"].to(device), mask)
        for path in reconstruction_figure(*clips, out / "reconstruction.png",
                                          out / "reconstruction.mp4"):
            print(f"wrote {path}")
    return OK
