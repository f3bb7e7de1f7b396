"""Model-only latency on the CPU per runtime: torch, ONNX Runtime, OpenVINO, and the int8
candidates of each.

ViT-B/16 at 16 x 224², eval mode, random weights (speed does not depend on them), full
tokens (linear head) and MAR 50 % (cell running + bridging head), built by
``mar.inference.runtime.runtime_model`` exactly as ``mar predict --runtime R [--int8]``
builds them (exported once into a scratch cache, not timed): ONNX Runtime int8 is its
``quantize_dynamic``, OpenVINO int8 NNCF's ``compress_weights``. ``--torchao`` adds
torchao's ``Int8DynamicActivationInt8WeightConfig`` on the torch model (what
``--runtime torch --int8`` runs on CPUs with VNNI or AMX; here on any CPU: 40x slower than
fp32 on an AVX2 CPU, a minute and more per ViT-B call there). The arms of one model run
interleaved (A, B, C, ... A, B, C) after a warm-up, so machine noise hits all alike; the
table reports medians over the repeats, the ratio to torch fp32, and each arm's logit
agreement with torch fp32 (cosine; random weights, so only a sanity figure).

    python benchmarks/bench_runtime.py --repeats 5 --batch 1
    python benchmarks/bench_runtime.py --model vit_small --repeats 2 --tokens mar50  # quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mar import create_model, make_masking
from mar.inference.runtime import TorchInt8, runtime_model
from mar.models.io import save_model
from mar.runtime.device import cpu_flags, cpu_name


def instruction_sets() -> str:
    """The instruction sets int8 and bf16 speed depend on, as this CPU lists them."""
    flags = cpu_flags() or set()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
              "amx_bf16"]
    return ", ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512/AMX"


def versions() -> str:
    """torch, ONNX Runtime, OpenVINO and NNCF versions, as installed."""
    import contextlib
    import importlib.metadata

    out = []
    for module in ("torch", "onnxruntime", "openvino", "nncf", "torchao"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{module} {importlib.metadata.version(module)}")
    return ", ".join(out)


def arms(folder: Path, name: str, head: str, ratio: float, runtimes: list[str],
         torchao: bool):
    """arm name -> a callable of a video batch, returning logits."""
    config = {"name": name, "num_classes": 400, "head": head}
    torch.manual_seed(0)
    model = create_model(**config).eval()
    masking = make_masking("cell_running" if ratio else "none", ratio)
    save_model(model, config, folder, masking={"name": masking.name, "ratio": ratio})
    runners = {"torch fp32": model}
    for int8 in (False, True):
        for runtime in runtimes:
            runners[f"{runtime}{' int8' if int8 else ' fp32'}"] = runtime_model(
                model, masking, folder, runtime, int8=int8)
    if torchao:   # the class `--runtime torch --int8` runs, without its CPU gate
        runners["torch int8 (torchao)"] = TorchInt8(model)
    out = {}
    for arm, m in runners.items():
        def call(video, m=m):
            with torch.inference_mode():
                return m.classify(video, masking(video.shape[0], model.grid, train=False))

        out[arm] = call
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--model", default="vit_base", help="a model size (default: "
                        "%(default)s; vit_small for a quick run)")
    parser.add_argument("--tokens", nargs="+", choices=["full", "mar50"],
                        default=["full", "mar50"])
    parser.add_argument("--torchao", action="store_true",
                        help="add torchao's int8 on the torch model (slow on AVX2 CPUs)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} ({torch.get_num_threads()} threads; {instruction_sets()}); "
          f"{versions()}")
    video = torch.randn(args.batch, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, head, ratio in (("full tokens", "linear", 0.0),
                                   ("MAR 50 %", "bridging", 0.5)):
            if ("full" if ratio == 0 else "mar50") not in args.tokens:
                continue
            calls = arms(Path(tmp) / label.replace(" ", "_"), args.model, head, ratio,
                         args.runtimes, args.torchao)
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
    print(f"\n{args.model}, 16 x 224², batch {args.batch}, median of {args.repeats} (seconds "
          "per call)\n")
    print("| tokens | runtime | median s | speed-up vs torch fp32 | min cosine vs torch |")
    print("|---|---|---|---|---|")
    for label, n, med, ratio, cos in rows:
        print(f"| {label} | {n} | {med:.3f} | {ratio:.2f}x | {cos:.5f} |")


if __name__ == "__main__":
    main()
