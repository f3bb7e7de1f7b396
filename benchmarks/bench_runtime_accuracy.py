"""Accuracy per runtime on trained models: torch fp32 against ONNX Runtime / OpenVINO fp32
and the int8 paths (ONNX Runtime's dynamic quantisation, OpenVINO's NNCF weight
compression, and torchao's on CPUs with VNNI or AMX, where ``--runtime torch --int8``
runs), on the same test views of the same videos.

For each run (e.g. the demo's ``standard`` and ``mar``), every video of ``--list`` is
scored through the one inference path (``mar.data.VideoViews``, ``mar.inference.score``)
once per runtime; the table reports video top-1 per runtime, its difference from torch
fp32, and the share of videos whose top-1 class equals torch fp32's (the accuracy gates:
int8 within 0.5 point of fp32 and agreeing on at least 98 % of videos).

    mar demo --out mar-demo
    python benchmarks/bench_runtime_accuracy.py mar-demo/standard mar-demo/MAR \
        --list mar-demo/data/val.csv --root mar-demo/data
"""

from __future__ import annotations

import argparse

import torch

from mar.data import read_list, view_loader
from mar.engine.evaluate import merge_views, predict_views
from mar.inference import load_model
from mar.inference.runtime import installed, runtime_model

ARMS = [("torch", False), ("onnxruntime", False), ("openvino", False), ("onnxruntime", True),
        ("openvino", True), ("torch", True)]


def video_scores(model, cfg, records, masking) -> tuple[torch.Tensor, torch.Tensor]:
    views = cfg.views_dataset(records, cfg.data.test_clips, cfg.data.test_crops)
    out = predict_views(model, view_loader(views, cfg.eval.batch_size), masking,
                        views_per_call=cfg.eval.batch_size)
    scores, labels, _ = merge_views(out["scores"], out["video"], out["label"], out["valid"])
    return scores, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="trained runs or checkpoints")
    parser.add_argument("--list", required=True, help="the videos ('path label' lines)")
    parser.add_argument("--root", help="prefix for relative paths in the list")
    args = parser.parse_args()
    records = read_list(args.list, args.root)
    print("| run | runtime | video top-1 % | vs torch fp32 | top-1 agreement | max |dp| |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        model, cfg = load_model(run, device="cpu")
        masking = cfg.test_masking()
        ref = None
        for runtime, int8 in ARMS:
            if runtime not in installed(int8):
                print(f"| {run} | {runtime} {'int8' if int8 else 'fp32'} | not here |")
                continue
            m = runtime_model(model, masking, run, runtime, int8=int8)
            scores, labels = video_scores(m, cfg, records, masking)
            top1 = 100 * (scores.argmax(1) == labels).float().mean().item()
            if ref is None:
                ref = (scores, top1)
            agree = 100 * (scores.argmax(1) == ref[0].argmax(1)).float().mean().item()
            name = f"{runtime} {'int8' if int8 else 'fp32'}"
            print(f"| {run} | {name} | {top1:.1f} | {top1 - ref[1]:+.1f} | {agree:.1f} % "
                  f"({len(labels)} videos) | {(scores - ref[0]).abs().max().item():.2e} |")


if __name__ == "__main__":
    main()
