"""The verdict rule of docs/results.md, applied to its figures (docs/token_reduction.md's
verdicts come from per-seed pairs, printed by bench_token_reduction.py with :func:`paired`).

Rule: a difference between two arms counts only when it exceeds twice the standard error
of the paired per-seed difference, SE = sd(a_s - b_s) / sqrt(n); otherwise it is "within
noise". Where the docs give the per-seed differences, SE is computed from them. Where
they give only each arm's mean ± sd (n = 3 seeds), the paired sd is bounded whatever the
pairing: |sd_a - sd_b| <= sd(a - b) <= sd_a + sd_b. A difference above twice the upper
bound counts; one below twice the lower bound is within noise; one in between cannot be
shown to exceed the rule without the per-seed pairs (not kept), so it does not count.

    python benchmarks/noise_rule.py

No training: the numbers are the ones the docs print (each row names its table).
"""

from __future__ import annotations

import math
import statistics

N = 3  # seeds


def paired(diffs: list[float]) -> str:
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    verdict = "counts" if abs(mean) > 2 * se else "within noise"
    return f"{mean:+.2f}, 2 SE = {2 * se:.2f} (per-seed {diffs}): {verdict}"


def bounded(a: tuple[float, float], b: tuple[float, float], n: int = N) -> str:
    d = a[0] - b[0]
    low, high = 2 * abs(a[1] - b[1]) / math.sqrt(n), 2 * (a[1] + b[1]) / math.sqrt(n)
    if abs(d) > high:
        verdict = "counts"
    elif abs(d) <= low:
        verdict = "within noise"
    else:
        verdict = "within noise (not shown to exceed: per-seed pairs not kept)"
    return f"{d:+.1f}, 2 SE in [{low:.2f}, {high:.2f}]: {verdict}"


ROWS = [
    # (label, per-seed differences) or (label, (mean, sd) of a, (mean, sd) of b)
    ("Fig1 natural raw: MAR 50 - standard (79.2 vs 73.6)", (79.2, 0.7), (73.6, 2.5)),
    ("Fig1 natural raw, first session: MAR 50 - standard", [2.1, 2.8, 9.0]),
    ("Fig1 natural raw: MAR 75 - standard (73.8 vs 73.6)", (73.8, 2.4), (73.6, 2.5)),
    ("Fig1 natural raw: bridging all tokens - standard (83.1 vs 73.6)", (83.1, 1.4), (73.6, 2.5)),
    ("Fig1 natural raw: MAR 50 - bridging all tokens (79.2 vs 83.1)", (79.2, 0.7), (83.1, 1.4)),
    ("Fig1 natural xavier: MAR 50 - standard", [6.3, 4.9, 1.4]),
    ("Fig1 natural xavier: MAR 75 - standard (69.0 vs 69.7)", (69.0, 0.4), (69.7, 2.4)),
    ("Fig1 natural std-0.02: MAR 50 - standard", [-3.5, 3.4, 0.0]),
    ("IXb natural raw: standard pretrained - scratch", [9.0, 7.6, 0.0]),
    ("IXb natural raw: MAR 50 pretrained - scratch (79.2 vs 83.6)", (79.2, 0.7), (83.6, 2.2)),
    ("IXb natural xavier: standard pretrained - scratch", [2.8, 0.7, 1.4]),
    ("IXb natural xavier: bridging 0 pretrained - scratch", (75.9, 2.1), (92.1, 1.4)),
    ("IXb natural xavier: bridging 50 pretrained - scratch", (73.8, 1.7), (83.6, 2.2)),
    ("IXb natural xavier: linear 50 pretrained - scratch", (68.3, 1.4), (62.5, 2.4)),
    ("V natural xavier: bridging - linear 0", (75.9, 2.1), (69.7, 2.4)),
    ("V natural xavier: bridging - linear 50", (73.8, 1.7), (68.3, 1.4)),
    ("Fig1 natural raw, first session: MAR 75 - standard", (75.2, 0.8), (73.6, 2.5)),
    ("IXb natural std-0.02: linear 0 pretrained - scratch", (57.4, 14.8), (68.1, 2.4)),
    ("IXb natural std-0.02: bridging 0 pretrained - scratch", (69.7, 9.9), (92.1, 1.4)),
    ("IXb natural std-0.02: linear 50 pretrained - scratch", (51.6, 17.0), (62.5, 2.4)),
    ("IXb natural std-0.02: bridging 50 pretrained - scratch", (57.4, 17.9), (83.6, 2.2)),
    ("V natural std-0.02 pretrained: bridging - linear 0", (69.7, 9.9), (57.4, 14.8)),
    ("V natural std-0.02 pretrained: bridging - linear 50", (57.4, 17.9), (51.6, 17.0)),
    ("V natural scratch: bridging - linear 0", (92.1, 1.4), (68.1, 2.4)),
    ("V natural scratch: bridging - linear 50", (83.6, 2.2), (62.5, 2.4)),
    ("IIIc natural scratch: 50-trained - 0-trained, test 0", (87.5, 2.1), (92.1, 1.4)),
    ("IIIc natural scratch: 50-trained - 0-trained, test 50", (83.6, 2.2), (85.4, 1.8)),
    ("layer decay 0.75 - none: standard", (72.7, 2.0), (73.6, 2.5)),
    ("layer decay 0.75 - none: bridging all tokens", (75.2, 1.4), (83.1, 1.4)),
    ("layer decay 0.75 - none: linear 50", (69.0, 3.5), (71.3, 1.7)),
    ("layer decay 0.75 - none: MAR 50", (74.3, 2.5), (79.2, 0.7)),
    ("IXb shapes: linear 0 pretrained - scratch", (16.0, 3.2), (25.5, 8.8)),
    ("IXb shapes: bridging 0 pretrained - scratch", (23.8, 9.9), (75.9, 1.7)),
    ("IXb shapes: linear 50 pretrained - scratch", (12.7, 1.1), (24.3, 13.2)),
    ("IXb shapes: bridging 50 pretrained - scratch", (19.2, 5.2), (67.1, 4.1)),
    ("II shapes: cell - random 25", (75.2, 2.1), (73.4, 2.8)),
    ("II shapes: cell - random 50", (67.1, 4.1), (69.0, 4.9)),
    ("II shapes: cell - random 75", (56.9, 3.0), (45.1, 3.7)),
    ("II natural: cell - random 25", (82.4, 2.8), (81.2, 2.4)),
    ("II natural: cell - random 50", (79.2, 0.7), (79.4, 2.0)),
    ("II natural: cell - random 75", (73.8, 2.4), (74.3, 1.4)),
    ("II shapes: tube - cell 50", (56.2, 0.7), (67.1, 4.1)),
    ("II shapes: frame - cell 50", (64.1, 1.4), (67.1, 4.1)),
    ("II shapes: block - cell 50", (59.3, 3.8), (67.1, 4.1)),
    ("II natural: tube - cell 50", (76.2, 1.1), (79.2, 0.7)),
    ("II natural: frame - cell 50", (78.2, 2.1), (79.2, 0.7)),
    ("II natural: block - cell 50", (75.9, 1.7), (79.2, 0.7)),
    ("II shapes: block running - block", (59.0, 3.9), (59.3, 3.8)),
    ("II natural: block running - block", (72.5, 2.8), (75.9, 1.7)),
    ("II shapes: downsample 2x - cell 75", (71.8, 4.6), (56.9, 3.0)),
    ("II natural: downsample 2x - cell 75", (74.5, 2.6), (73.8, 2.4)),
    ("IIIc shapes: 50-trained - 0-trained, test 0", (76.2, 3.1), (75.9, 1.7)),
    ("IIIc shapes: 50-trained - 0-trained, test 75", (56.9, 2.4), (51.6, 2.6)),
    ("IIIc shapes: 75-trained - 0-trained, test 75", (56.9, 3.0), (51.6, 2.6)),
    ("IIIc natural: 25-trained - 0-trained, test 0", (83.8, 3.4), (83.1, 1.4)),
    ("IIIc natural: 50-trained - 0-trained, test 0", (80.6, 1.8), (83.1, 1.4)),
    ("IIIc natural: 75-trained - 0-trained, test 0", (78.5, 1.8), (83.1, 1.4)),
    ("IIIc natural: 75-trained - 0-trained, test 75", (73.8, 2.4), (70.4, 4.6)),
    ("IIIc natural: 50-trained - 0-trained, test 75", (73.6, 6.2), (70.4, 4.6)),
    ("IIIc natural: 50-trained - 0-trained, test 50", (79.2, 0.7), (78.2, 1.4)),
    ("IIIc natural: 25-trained - 0-trained, test 50", (79.9, 3.2), (78.2, 1.4)),
    ("V shapes: bridging - linear 0", (75.9, 1.7), (25.5, 8.8)),
    ("V shapes: bridging - linear 50", (67.1, 4.1), (24.3, 13.2)),
    ("V natural pretrained: bridging - linear 0", (83.1, 1.4), (73.6, 2.5)),
    ("V natural pretrained: bridging - linear 50", (79.2, 0.7), (71.3, 1.7)),
    ("IXa shapes: lambda 0.1 - lambda 1", (67.1, 4.1), (65.0, 2.6)),
    ("IXa shapes: lambda 0.1 - lambda 0", (67.1, 4.1), (65.7, 2.1)),
    ("IXa natural: lambda 1 - lambda 0.1", (80.3, 0.4), (79.2, 0.7)),
    ("IXa natural: lambda 1 - lambda 0.2", (80.3, 0.4), (78.2, 3.6)),
    ("IXa natural: lambda 0.1 - lambda 0", (79.2, 0.7), (78.7, 2.4)),
]


def main() -> None:
    for label, *values in ROWS:
        result = paired(values[0]) if len(values) == 1 else bounded(*values)
        print(f"{label}: {result}")


if __name__ == "__main__":
    main()
