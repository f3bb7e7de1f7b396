"""The paper's ablations at small scale, several seeds, on the synthetic benchmark.

Every run is the `mar demo` setting (vit_nano, 16 x 64^2 clips, the 12-class synthetic
benchmark) with one thing changed; each (setting, seed) trains once, is evaluated at the
test ratios its table needs, and is cached in ``--out/runs.json`` so an interrupted
study continues where it stopped. Prints and writes a Markdown table of mean ± std.

    python benchmarks/study.py --tables V --ratios 0 0.5 --seeds 3 --epochs 30

Tables: ``V`` (bridging vs linear at each training ratio; with the bridging runs tested
at every ratio this also gives Table III(c)), ``II`` (masking strategies at each ratio),
``IXa`` (lambda).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mar.config import load_config
from mar.data.synth import CLASSES, SynthConfig, synthesize
from mar.demo import DemoConfig, run_config
from mar.engine.distributed import init_distributed
from mar.engine.trainer import run_eval, train


def experiments(tables: list[str], ratios: list[float]) -> dict[str, dict]:
    """name -> {overrides, test ratios}."""
    out = {}
    if "V" in tables:
        for r in ratios:
            for head in ("linear", "bridging"):
                out[f"V/{head}/{r:g}"] = {
                    "overrides": {"model.head": head,
                                  "masking.name": "cell_running" if r else "none",
                                  "masking.ratio": r, "train.rec_weight": 0.1 if r else 0.0},
                    "test_ratios": [0.0, 0.25, 0.5, 0.75] if head == "bridging" else [r]}
    if "II" in tables:
        for r in ratios:
            for s in ("random", "tube", "frame", "block", "block_running", "random_running",
                      "uniform_running", "cell_running"):
                if r == 0 or (s == "uniform_running" and r not in (0.25, 0.5, 0.75)):
                    continue
                out[f"II/{s}/{r:g}"] = {
                    "overrides": {"masking.name": s, "masking.ratio": r,
                                  "eval_masking.name": s, "eval_masking.ratio": r},
                    "test_ratios": [None]}
    if "IXa" in tables:
        for lam in (0.0, 0.1, 0.2, 0.4, 1.0):
            out[f"IXa/{lam:g}"] = {"overrides": {"train.rec_weight": lam},
                                   "test_ratios": [0.5]}
    return out


def run_one(demo: DemoConfig, data: Path, spec: dict, seed: int, out: Path) -> dict:
    base = run_config(demo, data, mar=True)
    tree = base.model_dump(mode="json")
    overrides = {**spec["overrides"], "train.seed": seed}
    flat = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    cfg = load_config(None, [*_flatten(tree), *flat])
    run_dir = out / "work"
    summary = train(cfg, run_dir, overwrite=True)
    from mar.inference import load_run

    model, cfg = load_run(run_dir / "best")
    info = init_distributed("cpu")
    result = {"train_s": summary["wall_time_s"], "top1": {}}
    for ratio in spec["test_ratios"]:
        test_cfg = cfg
        if ratio is not None:
            mask = cfg.masking.model_copy(update={"name": "cell_running" if ratio else "none",
                                                  "ratio": ratio, "cell": None,
                                                  "spatial": None, "temporal": None,
                                                  "start_state": None, "initial": None})
            test_cfg = cfg.model_copy(update={"eval_masking": mask})
        result["top1"][str(ratio)] = run_eval(test_cfg, model, "test", info).video_top1
    return result


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        elif value is not None or prefix:  # an unset top-level section stays unset
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["V"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="study")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = DemoConfig(out=str(out), epochs=args.epochs)
    data = out / "data"
    synthesize(data, SynthConfig(num_frames=demo.num_frames, size=demo.size,
                                 per_class_train=demo.per_class_train,
                                 per_class_val=demo.per_class_val, seed=0))
    cache_file = out / "runs.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    specs = experiments(args.tables, args.ratios)
    start = time.perf_counter()
    for name, spec in specs.items():
        for seed in range(args.seeds):
            key = f"{name}/seed{seed}/epochs{args.epochs}"
            if key in cache:
                continue
            cache[key] = run_one(demo, data, spec, seed, out)
            cache_file.write_text(json.dumps(cache, indent=1))
            print(f"{key}: {cache[key]['top1']} ({time.perf_counter() - start:.0f}s so far)",
                  flush=True)
    lines = [f"chance: {100 / len(CLASSES):.1f} %; {args.seeds} seeds; {args.epochs} epochs",
             "", "| setting | test ratio | top-1 % mean ± std | runs | train s (mean) |",
             "|---|--:|--:|--:|--:|"]
    for name, spec in specs.items():
        runs = [cache[f"{name}/seed{s}/epochs{args.epochs}"] for s in range(args.seeds)]
        for ratio in spec["test_ratios"]:
            accs = [r["top1"][str(ratio)] for r in runs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            lines.append(f"| {name} | {ratio if ratio is not None else 'as trained'} | "
                         f"{statistics.mean(accs):.1f} ± {std:.1f} | {len(accs)} | "
                         f"{statistics.mean(r['train_s'] for r in runs):.0f} |")
    table = "\n".join(lines)
    print(table)
    (out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
