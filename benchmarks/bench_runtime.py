"""Model-only latency on the CPU per runtime: torch, ONNX Runtime, OpenVINO, int8.

ViT-B/16 at 16 x 224², eval mode, random weights (speed does not depend on them), full
tokens (linear head) and MAR 50 % (cell running + bridging head), built by
``mar.inference.runtime.runtime_model`` exactly as ``mar predict --runtime R [--int8]``
builds them (exported once into a scratch cache, not timed). The arms of one model run
interleaved (A, B, C, ... A, B, C) after a warm-up, so machine noise hits all alike; the
table reports medians over the repeats, the ratio to torch fp32, and the int8 arms'
logit agreement with fp32 (cosine; random weights, so only a sanity figure).

    python benchmarks/bench_runtime.py --repeats 5 --batch 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mar import create_model, make_masking
from mar.inference.runtime import runtime_model
from mar.models.io import save_model
from mar.runtime.device import cpu_flags, cpu_name


def instruction_sets() -> str:
    """The instruction sets int8 and bf16 speed depend on, as this CPU lists them."""
    flags = cpu_flags() or set()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
              "amx_bf16"]
    return ", ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512/AMX"


def arms(folder: Path, head: str, ratio: float, runtimes: list[str]):
    """name -> (a callable of a video batch, the model's reference callable)."""
    config = {"name": "vit_base", "num_classes": 400, "head": head}
    torch.manual_seed(0)
    model = create_model(**config).eval()
    masking = make_masking("cell_running" if ratio else "none", ratio)
    save_model(model, config, folder, masking={"name": masking.name, "ratio": ratio})
    out = {}
    for runtime, int8 in (("torch", False), *((r, False) for r in runtimes),
                          ("onnxruntime", True)):
        if runtime != "torch" and runtime not in runtimes:
            continue
        m = runtime_model(model, masking, folder, runtime, int8=int8)
        name = f"{runtime}{' int8' if int8 else ' fp32'}"

        def call(video, m=m):
            with torch.inference_mode():
                return m.classify(video, masking(video.shape[0], model.grid, train=False))

        out[name] = call
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"])
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} ({torch.get_num_threads()} threads; {instruction_sets()}); torch "
          f"{torch.__version__}")
    video = torch.randn(args.batch, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, head, ratio in (("full tokens", "linear", 0.0),
                                   ("MAR 50 %", "bridging", 0.5)):
            calls = arms(Path(tmp) / label.replace(" ", "_"), head, ratio, args.runtimes)
            ref = calls["torch fp32"](video)
            agree = {n: float(torch.nn.functional.cosine_similarity(c(video), ref).min())
                     for n, c in calls.items()}          # also the warm-up
            times = {n: [] for n in calls}
            for _ in range(args.repeats):
                for n, c in calls.items():
                    start = time.perf_counter()
                    c(video)
                    times[n].append(time.perf_counter() - start)
            base = statistics.median(times["torch fp32"])
            for n in calls:
                med = statistics.median(times[n])
                rows.append((label, n, med, base / med, agree[n]))
    print(f"\nViT-B/16, 16 x 224², batch {args.batch}, median of {args.repeats} (seconds per "
          "call)\n")
    print("| tokens | runtime | median s | speed-up vs torch fp32 | min cosine vs torch |")
    print("|---|---|---|---|---|")
    for label, n, med, ratio, cos in rows:
        print(f"| {label} | {n} | {med:.3f} | {ratio:.2f}x | {cos:.5f} |")


if __name__ == "__main__":
    main()
