"""Inference latency: our full-token ViT-B, our MAR-50%, and transformers' VideoMAE.

ViT-B/16, 16x224x224 clips, eval mode, ``torch.inference_mode``. The three models run
interleaved (A, B, C, A, B, C, ...) after a warm-up, so machine noise hits all alike;
the table reports medians over the repeats and ratios of medians.

    python benchmarks/bench_inference.py --repeats 7 [--compile]

``--compile`` adds each model under ``torch.compile`` (default inductor backend) and
reports what the first call, which compiles, took.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mar import create_model, make_masking
from mar.flops import model_cost


def build(batch: int, device: str, compile: bool = False):
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    video = torch.randn(batch, 3, 16, 224, 224, device=device)
    full = create_model("vit_base", num_classes=400, head="linear").eval().to(device)
    mar = create_model("vit_base", num_classes=400, head="bridging").eval().to(device)
    masking = make_masking("cell_running", 0.5)
    mask = masking(batch, mar.grid, train=False).to(device)
    hf = VideoMAEForVideoClassification(
        VideoMAEConfig(num_labels=400, attn_implementation="sdpa")).eval().to(device)
    hf_video = video.transpose(1, 2).contiguous()  # transformers takes (B, T, C, H, W)
    # each arm: what runs (torch.compile takes it as is) and how it is called
    models = {"mar full tokens (linear head)": (full.classify, lambda m: m(video)),
              "mar MAR 50% (cell running + bridging)": (mar.classify,
                                                        lambda m: m(video, mask)),
              "transformers VideoMAEForVideoClassification (sdpa)":
                  (hf, lambda m: m(pixel_values=hf_video).logits)}
    gflops = {
        "mar full tokens (linear head)": model_cost("vit_base", head="linear").gflops,
        "mar MAR 50% (cell running + bridging)": model_cost("vit_base", masking).gflops,
        "transformers VideoMAEForVideoClassification (sdpa)":
            model_cost("vit_base", head="linear", final_norm=False).gflops,
    }
    runs = {name: (lambda m=m, call=call: call(m)) for name, (m, call) in models.items()}
    if compile:
        for name, (m, call) in models.items():
            compiled = torch.compile(m)
            runs[name + ", torch.compile"] = lambda m=compiled, call=call: call(m)
            gflops[name + ", torch.compile"] = gflops[name]
    return runs, gflops


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="add torch.compile arms")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    runs, gflops = build(args.batch, args.device, args.compile)
    times: dict[str, list[float]] = {name: [] for name in runs}
    first: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for name, fn in runs.items():
                first.setdefault(name, timed(fn, args.device))
        for i in range(args.repeats):
            names = list(runs)
            names = names[i % len(names):] + names[:i % len(names)]  # rotate the order
            for name in names:
                times[name].append(timed(runs[name], args.device))
            print(f"repeat {i + 1}/{args.repeats}: " + ", ".join(
                f"{times[n][-1]:.3f}s" for n in runs), flush=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    names = list(runs)
    full, mar, hf = names[:3]
    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads")
    print(f"\nViT-B/16, {args.batch} x 16x224x224, {args.device} ({device}), "
          f"torch {torch.__version__}, median of {args.repeats}\n")
    print("| model | GFLOPs/view | median s | min s | max s | speed-up vs transformers |")
    print("|---|--:|--:|--:|--:|--:|")
    for n in names:
        print(f"| {n} | {gflops[n]:.1f} | {med[n]:.3f} | {min(times[n]):.3f} | "
              f"{max(times[n]):.3f} | {med[hf] / med[n]:.2f}x |")
    print(f"\nMAR 50% vs our full-token model: {med[full] / med[mar]:.2f}x faster "
          f"(FLOPs ratio {gflops[full] / gflops[mar]:.2f}x)")
    for n in names[3:]:
        print(f"{n}: first call (compiling) {first[n]:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "batch": args.batch, "times": times,
                       "gflops": gflops, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
