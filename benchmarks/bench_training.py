"""Training step time and peak memory: standard training vs MAR (paper Table V, Fig. 7).

standard: all tokens, linear head, no decoder (rec weight 0).
MAR:      cell running 50 %, bridging classifier, reconstruction decoder, lambda 0.1.
ViT-B/16, 16x224x224, AdamW, float32. Each measurement runs in a fresh process (so peak
memory is that configuration's alone); the two alternate, several rounds, medians.
On CPU, memory is the process's resident set: ``peak`` is its high-water mark during
the timed steps (weights, gradients, AdamW state and activations), ``activations`` that
peak minus the resident size between steps. On a GPU, ``torch.cuda`` peak allocation.

    python benchmarks/bench_training.py --rounds 3 --steps 3 --batch 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(mode: str, batch: int, steps: int, device: str) -> dict:
    import torch

    from mar import create_model, make_masking
    from mar.engine.optim import build_optimizer
    from mar.losses import mar_loss

    torch.manual_seed(0)
    mar = mode == "mar"
    model = create_model("vit_base", num_classes=174, head="bridging" if mar else "linear",
                         decoder=mar).to(device).train()
    opt = build_optimizer(model, 1e-4)
    masking = make_masking("cell_running" if mar else "none", 0.5 if mar else 0.0)
    video = torch.randn(batch, 3, 16, 224, 224, device=device)
    labels = torch.randint(0, 174, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)

    def step():
        mask = masking(batch, model.grid, train=True, generator=gen).to(device)
        loss = mar_loss(model(video, mask), labels, rec_weight=0.1 if mar else 0.0).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocates gradients and AdamW state
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _rss_kib("VmRSS")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out = {"mode": mode, "batch": batch, "step_s": statistics.median(times)}
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = _rss_kib("VmHWM")
        out["peak_gib"] = peak / 2**20
        out["activations_gib"] = (peak - base) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BATCH", "STEPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        mode, batch, steps = args.child
        print(json.dumps(measure(mode, int(batch), int(steps), device)))
        return
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        for batch in args.batch:
            for mode in (("standard", "mar") if r % 2 == 0 else ("mar", "standard")):
                cmd = [sys.executable, __file__, "--device", device, "--child", mode,
                       str(batch), str(args.steps)]
                line = subprocess.run(cmd, check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1]
                res = json.loads(line)
                results.setdefault((mode, batch), []).append(res)
                print(f"round {r + 1}: {mode} batch {batch}: {res['step_s']:.2f} s/step, "
                      f"peak {res['peak_gib']:.2f} GiB", flush=True)
    name = (torch.cuda.get_device_name() if device == "cuda"
            else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"\nViT-B/16 training step, 16x224x224, AdamW fp32, {name}, torch "
          f"{torch.__version__}; medians of {args.rounds} processes x {args.steps} steps\n")
    act = device != "cuda"
    print("| batch | setting | s/step | peak GiB |" + (" activations GiB |" if act else ""))
    print("|--:|---|--:|--:|" + ("--:|" if act else ""))
    summary = {}
    for batch in args.batch:
        for mode in ("standard", "mar"):
            rows = results[(mode, batch)]
            s = {k: statistics.median(r[k] for r in rows) for k in rows[0]
                 if k not in ("mode", "batch")}
            summary[f"{mode}_{batch}"] = s
            label = "standard (all tokens, linear)" if mode == "standard" else \
                "MAR (cell running 50 %, bridging + decoder)"
            print(f"| {batch} | {label} | {s['step_s']:.2f} | {s['peak_gib']:.2f} |" +
                  (f" {s['activations_gib']:.2f} |" if act else ""))
    for batch in args.batch:
        st, ma = summary[f"standard_{batch}"], summary[f"mar_{batch}"]
        line = (f"batch {batch}: MAR is {st['step_s'] / ma['step_s']:.2f}x faster per step; "
                f"peak memory {ma['peak_gib'] / st['peak_gib']:.2f}x")
        if act:
            line += f", activation memory {ma['activations_gib'] / st['activations_gib']:.2f}x"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
