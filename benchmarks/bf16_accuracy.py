"""bf16 against fp32 on trained models: does `--amp bf16` change what they predict?

    python benchmarks/bf16_accuracy.py mar-demo/standard mar-demo/MAR

Each argument is anything `mar eval --checkpoint` takes (a run folder, a checkpoint, a
model directory with its config). Both precisions see the same views: those of the run's
test split, at its test-time masking; bf16 is `torch.autocast` as in `mar predict --amp
bf16` and `mar eval --amp bf16`. Prints a Markdown table per view: top-1 in
each precision, how often the top-1 class agrees, and the largest change of any class
probability.
"""

from __future__ import annotations

import argparse

import torch

from mar.data import view_loader
from mar.engine.evaluate import predict_views
from mar.inference import load_model
from mar.runtime.device import cpu_bf16_instructions


def compare(path: str) -> dict:
    model, cfg = load_model(path, device="cpu")
    loader = view_loader(cfg.dataset("test"), cfg.eval.batch_size)
    fp32, bf16 = (predict_views(model, loader, cfg.test_masking(), amp=amp,
                                views_per_call=cfg.eval.batch_size)
                  for amp in ("none", "bf16"))
    keep = fp32["valid"].bool()
    a, b, labels = fp32["scores"][keep], bf16["scores"][keep], fp32["label"][keep]
    return {"views": len(a),
            "top1_fp32": 100 * (a.argmax(1) == labels).float().mean().item(),
            "top1_bf16": 100 * (b.argmax(1) == labels).float().mean().item(),
            "agree": int((a.argmax(1) == b.argmax(1)).sum()),
            "max_dp": (a - b).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    kernels = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}; oneDNN bf16 kernels: {kernels}; bf16 instructions "
          f"of this CPU: {', '.join(cpu_bf16_instructions() or []) or 'none (emulated)'}\n")
    print("| run | views | top-1 % fp32 | top-1 % bf16 | same top-1 class | largest "
          "probability change |")
    print("|---|--:|--:|--:|--:|--:|")
    for run in args.runs:
        r = compare(run)
        print(f"| {run} | {r['views']} | {r['top1_fp32']:.1f} | {r['top1_bf16']:.1f} | "
              f"{r['agree']} of {r['views']} | {r['max_dp']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
