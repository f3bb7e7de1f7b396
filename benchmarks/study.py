"""The paper's ablations at small scale, several seeds, on the synthetic benchmark.

Every run is the `mar demo` setting (vit_nano, 16 x 64^2 clips, the 12-class synthetic
benchmark) with one thing changed; each (setting, seed) trains once, is evaluated at the
test ratios its table needs, and is cached in ``--out/runs.json`` so an interrupted
study continues where it stopped. Prints a Markdown table of mean ± std and writes it
with a bar chart (``results_<tables>.md`` / ``.png``).

    python benchmarks/study.py --tables V --ratios 0 0.5 --seeds 3 --epochs 30

Tables: ``V`` (bridging vs linear at each training ratio; the bridging runs are tested at
every ratio, which is Table III(c); ``IIIc`` shows only those), ``II`` (masking
strategies: all of them at 50 %, random vs cell running at the other ratios, and the 2x
downsampled input when 75 % is asked for), ``IXa`` (lambda), ``IXb`` (from scratch vs
from a `mar pretrain` run of the same seed on the training videos, for both heads at 0
and 50 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mar.atomic import write_text
from mar.config import Config, build_config, config_tree
from mar.data.synth import CLASSES, SynthConfig, synthesize
from mar.demo import DemoConfig, run_config
from mar.engine.distributed import init_distributed
from mar.engine.evaluate import run_eval
from mar.engine.trainer import train
from mar.masking import make_masking

STRATEGIES = ("random", "tube", "frame", "block", "block_running", "random_running",
              "uniform_running", "cell_running")


def table_v(head: str, ratio: float) -> dict:
    """One training setting of Table V, tested at every ratio when the head is bridging
    (the rows of Table III(c))."""
    return {"overrides": {"model.head": head,
                          "masking.name": "cell_running" if ratio else "none",
                          "masking.ratio": ratio, "train.rec_weight": 0.1 if ratio else 0.0},
            "test_ratios": [0.0, 0.25, 0.5, 0.75] if head == "bridging" else [ratio]}


def experiments(tables: list[str], ratios: list[float]) -> dict[str, dict]:
    """name -> {overrides, test_ratios[, same_as, report, pretrained]}.

    ``same_as`` names the run that already is this setting (its cache entry is shared);
    ``report`` is the subset of test ratios this table shows; ``pretrained`` starts the
    fine-tuning from a `mar pretrain` run of the same seed."""
    out = {}
    if "V" in tables:
        for r in ratios:
            for head in ("linear", "bridging"):
                out[f"V/{head}/{r:g}"] = table_v(head, r)
    if "IIIc" in tables:  # the bridging rows of Table V, each tested at every ratio
        for r in ratios:
            out[f"IIIc/{r:g}"] = {**table_v("bridging", r), "same_as": f"V/bridging/{r:g}"}
    if "II" in tables:  # the paper's rows: every strategy at 50 %, random vs cell elsewhere
        for r in [r for r in ratios if r > 0]:
            for s in STRATEGIES if r == 0.5 else ("random", "cell_running"):
                if s == "cell_running":
                    out[f"II/{s}/{r:g}"] = {**table_v("bridging", r), "report": [r],
                                            "same_as": f"V/bridging/{r:g}"}
                    continue
                out[f"II/{s}/{r:g}"] = {
                    "overrides": {"masking.name": s, "masking.ratio": r,
                                  "eval_masking.name": s, "eval_masking.ratio": r},
                    "test_ratios": [None]}
        if 0.75 in ratios:  # "D.S. 2x": all tokens of a clip downsampled to half the size
            out["II/downsample2x/0"] = {
                "overrides": {"model.img_size": 32, "data.crop_size": 32,
                              "masking.name": "none", "masking.ratio": 0.0,
                              "train.rec_weight": 0.0},
                "test_ratios": [None]}
    if "IXa" in tables:
        for lam in (0.0, 0.1, 0.2, 0.4, 1.0):
            out[f"IXa/{lam:g}"] = {"overrides": {"train.rec_weight": lam},
                                   "test_ratios": [0.5]}
    if "IXb" in tables:  # scratch vs pretrained, for both heads (Table V on pretrained)
        for head, r in (("linear", 0.0), ("bridging", 0.0), ("linear", 0.5),
                        ("bridging", 0.5)):
            setting = table_v(head, r)
            report = [0.0, 0.5] if head == "bridging" else [r]
            out[f"IXb/scratch/{head}/{r:g}"] = {**setting, "report": report,
                                                "same_as": f"V/{head}/{r:g}"}
            out[f"IXb/pretrained/{head}/{r:g}"] = {**setting, "report": report,
                                                   "pretrained": True}
    return out


def study_config(demo: DemoConfig, data: Path, overrides: dict) -> Config:
    """The MAR setting of `mar demo` with ``overrides`` (dotted keys) applied."""
    tree = config_tree(run_config(demo, data, mar=True))
    return build_config(tree, overrides, where="study")


def pretrain_config(demo: DemoConfig, data: Path, **overrides) -> Config:
    """Reconstruction only (`mar pretrain`): VideoMAE's tube 90 % unless overridden."""
    return study_config(demo, data, {"train.task": "pretrain", "masking.name": "tube",
                                     "masking.ratio": 0.9, "eval_masking": None,
                                     "train.rec_weight": 1.0, "train.keep_last": 1,
                                     **overrides})


def pretrain(demo: DemoConfig, data: Path, seed: int, epochs: int, out: Path) -> dict:
    """A `mar pretrain` run on the training videos."""
    cfg = pretrain_config(demo, data, **{"train.epochs": epochs, "train.eval_every": epochs,
                                         "train.seed": seed})
    run_dir = out / "pretrain" / f"seed{seed}-epochs{epochs}"
    summary = train(cfg, run_dir, overwrite=True)
    last = sorted(run_dir.glob("checkpoint-*"))[-1]
    return {"dir": str(last), "train_s": summary["wall_time_s"]}


def run_one(demo: DemoConfig, data: Path, spec: dict, seed: int, out: Path,
            init: str | None = None) -> dict:
    overrides = {**spec["overrides"], "train.seed": seed}
    if init:
        overrides["train.init"] = init
    cfg = study_config(demo, data, overrides)
    run_dir = out / "work"
    summary = train(cfg, run_dir, overwrite=True)
    from mar.inference import load_run

    model, cfg = load_run(run_dir / "best")
    info = init_distributed("cpu")
    result = {"train_s": summary["wall_time_s"], "top1": {}}
    for ratio in spec["test_ratios"]:
        masking = None if ratio is None else make_masking(
            "cell_running" if ratio else "none", ratio)
        result["top1"][str(ratio)] = run_eval(cfg, model, "test", info,
                                              masking=masking).video_top1
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["V"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=100,
                        help="length of the `mar pretrain` run behind Table IX(b)")
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

    def key(name: str, spec: dict, seed: int) -> str:
        pre = f"/pretrain{args.pretrain_epochs}" if spec.get("pretrained") else ""
        return f"{spec.get('same_as', name)}/seed{seed}/epochs{args.epochs}{pre}"

    def save() -> None:
        write_text(cache_file, json.dumps(cache, indent=1))

    start = time.perf_counter()
    for name, spec in specs.items():
        for seed in range(args.seeds):
            k = key(name, spec, seed)
            if k in cache:
                continue
            init = None
            if spec.get("pretrained"):
                pk = f"pretrain/seed{seed}/epochs{args.pretrain_epochs}"
                if pk not in cache:
                    cache[pk] = pretrain(demo, data, seed, args.pretrain_epochs, out)
                    save()
                init = cache[pk]["dir"]
            cache[k] = run_one(demo, data, spec, seed, out, init)
            save()
            print(f"{k}: {cache[k]['top1']} ({time.perf_counter() - start:.0f}s so far)",
                  flush=True)
    lines = [f"chance: {100 / len(CLASSES):.1f} %; {args.seeds} seeds; {args.epochs} epochs",
             "", "| setting | test ratio | top-1 % mean ± std | runs | train s (mean) |",
             "|---|--:|--:|--:|--:|"]
    rows = []
    for name, spec in specs.items():
        runs = [cache[key(name, spec, s)] for s in range(args.seeds)]
        for ratio in spec.get("report", spec["test_ratios"]):
            accs = [r["top1"][str(ratio)] for r in runs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            rows.append((f"{name} @ {'trained' if ratio is None else f'{ratio:g}'}", accs))
            lines.append(f"| {name} | {ratio if ratio is not None else 'as trained'} | "
                         f"{statistics.mean(accs):.1f} ± {std:.1f} | {len(accs)} | "
                         f"{statistics.mean(r['train_s'] for r in runs):.0f} |")
    if any(s.get("pretrained") for s in specs.values()):
        pre = [cache[f"pretrain/seed{s}/epochs{args.pretrain_epochs}"]["train_s"]
               for s in range(args.seeds)]
        lines += ["", f"pretraining ({args.pretrain_epochs} epochs, tube 90 %): "
                  f"{statistics.mean(pre):.0f} s per seed, not included above"]
    table = "\n".join(lines)
    print(table)
    stem = "results_" + "_".join(args.tables)
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / f'{stem}.md'} and {plot(rows, out / f'{stem}.png')}")


def plot(rows: list[tuple[str, list[float]]], path: Path) -> Path:
    """One bar per row (mean, ± std) with every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    y = range(len(rows))
    means = [statistics.mean(a) for _, a in rows]
    stds = [statistics.stdev(a) if len(a) > 1 else 0.0 for _, a in rows]
    ax.barh(y, means, xerr=stds, color="tab:blue", alpha=0.5, capsize=3)
    for i, (_, accs) in enumerate(rows):
        ax.scatter(accs, [i] * len(accs), s=10, color="black", zorder=3)
    ax.axvline(100 / len(CLASSES), color="gray", ls=":", label="chance")
    ax.set_yticks(list(y), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("video top-1 % (mean ± std over seeds; dots: seeds)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
