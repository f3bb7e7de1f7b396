"""``mar export``: the masked inference path as ONNX, its evaluation mask built in."""

from __future__ import annotations

import argparse

from .options import add_mask_ratio, add_model, load_for_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the masked inference path (ONNX)",
                       description="Write the deploy model with its deterministic test-time "
                       "mask built in: input 'video' (batch, 3, T, H, W), normalised as in "
                       "training, dynamic batch; output 'logits'. Example: `mar export "
                       "--checkpoint runs/ssv2_b_mar50 --out mar.onnx`.")
    add_model(p)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    add_mask_ratio(p)
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.export import export_onnx
    from ..inference.load import describe_masking

    if args.amp != "none":
        from ..errors import ConfigError

        raise ConfigError("--amp: the ONNX graph is exported in float32; quantise or cast "
                          "it in the runtime that runs it")
    model, cfg, masking = load_for_command(args)
    print(describe_masking(masking, model.grid))
    path = export_onnx(model, masking, args.out, args.opset)
    mask = masking(1, model.grid, train=False)
    print(f"wrote {path}: input 'video' (batch, 3, {cfg.model.num_frames}, "
          f"{cfg.model.img_size}, {cfg.model.img_size}) normalised with mean "
          f"{cfg.model.pixel_mean} and std {cfg.model.pixel_std}; output 'logits' "
          f"(batch, {cfg.model.num_classes}); {mask.num_visible} of {mask.num_tokens} tokens "
          "visible")
    return 0
