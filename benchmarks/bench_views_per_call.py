"""How many views per model call is fastest? Model time only, random weights.

`mar predict` runs the views of several videos through the model in calls of
``--batch-size`` views. On a GPU larger calls are faster; on a CPU a call's activations
outgrow the caches, so more views per call can be slower. This times the same views split
into calls of 1, 2, 4, ... views, interleaved, for MAR and for all tokens:

    python benchmarks/bench_views_per_call.py --repeats 5

Prints seconds per view (median over repeats) and the ratio to the fastest split.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mar import create_model, make_masking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views", type=int, default=8, help="views timed per repeat")
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="views per model call")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.0],
                        help="test-time mask ratios (cell running; 0 = all tokens)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=400, num_frames=args.frames,
                         img_size=args.size).eval()
    x = torch.randn(args.views, 3, args.frames, args.size, args.size)
    arms = [(r, b) for r in args.ratios for b in args.calls]
    times: dict[tuple[float, int], list[float]] = {arm: [] for arm in arms}

    def run(ratio: float, per_call: int) -> float:
        masking = make_masking("cell_running" if ratio else "none", ratio)
        start = time.perf_counter()
        for chunk in x.split(per_call):
            mask = masking(chunk.shape[0], model.grid, train=False)
            model.classify(chunk, mask)
        return time.perf_counter() - start

    with torch.inference_mode():
        run(args.ratios[0], args.calls[0])                      # warm-up
        for i in range(args.repeats):
            for arm in arms if i % 2 == 0 else arms[::-1]:      # interleaved both ways
                times[arm].append(run(*arm) / args.views)
            print(f"repeat {i + 1}/{args.repeats}", flush=True)

    print(f"\n{args.model}, {args.frames}x{args.size}², {args.views} views per repeat, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}\n")
    print("| tokens | views per call | s per view | vs fastest |")
    print("|---|--:|--:|--:|")
    for ratio in args.ratios:
        medians = {b: statistics.median(times[ratio, b]) for b in args.calls}
        best = min(medians.values())
        name = f"MAR {ratio:.0%}" if ratio else "all"
        for b, t in medians.items():
            print(f"| {name} | {b} | {t:.3f} | {t / best:.2f}x |")


if __name__ == "__main__":
    main()
