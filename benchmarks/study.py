"""The paper's ablations at small scale, several seeds, on an embedded benchmark.

Every run is the `mar demo` setting (vit_nano, 16 x 64^2 clips, the 12-class synthetic
benchmark; ``--kind natural`` for the photographs set, with ``--size``/``--patch``) with
one thing changed; each (setting, seed) trains once, is evaluated at the
test ratios its table needs, and is cached in ``--out/runs.json`` so an interrupted
study continues where it stopped. Prints a Markdown table of mean ± std and writes it
with a bar chart (``results_<tables>.md`` / ``.png``).

    python benchmarks/study.py --tables V --ratios 0 0.5 --seeds 3 --epochs 30

Tables: ``V`` (bridging vs linear at each training ratio; the bridging runs are tested at
every ratio, which is Table III(c); ``IIIc`` shows only those), ``II`` (masking
strategies: all of them at 50 %, random vs cell running at the other ratios, and the 2x
downsampled input when 75 % is asked for), ``IXa`` (lambda), ``IXb`` (from scratch vs
from a `mar pretrain` run of the same seed on the training videos, for both heads at 0
and 50 %), ``Fig1`` (the paper's Fig. 1: from the same pretrained encoder, standard
fine-tuning on all tokens with a linear head against MAR at 50 % and 75 %, plotted as
accuracy against GFLOPs per view), ``pretrain`` (only the pretraining of each seed, its
reconstruction loss against the trivial predictor's).

    python benchmarks/study.py --kind natural --size 64 --patch 8 --frames 8 --tables Fig1 \
        --seeds 3 --epochs 30 --pretrain-epochs 100 --out study-nat8

(the run of docs/results.md; ``--seeds 1 --first-seed S`` runs one seed, and several such
processes may share ``--out``; ``--set key=value`` changes every fine-tuning run;
``--from-pretrained`` starts Tables II, III(c), V and IX(a) from each seed's pretrained
encoder instead of random weights.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from mar.atomic import write_text
from mar.config import Config, build_config, config_tree
from mar.data import read_class_names
from mar.data.synth import SynthConfig, synthesize
from mar.demo import DemoConfig, pretrain_config, pretrain_summary, run_config
from mar.engine.evaluate import run_eval
from mar.engine.trainer import train
from mar.flops import model_cost
from mar.masking import make_masking
from mar.runtime.distributed import init_distributed

STRATEGIES = ("random", "tube", "frame", "block", "block_running", "random_running",
              "uniform_running", "cell_running")


def table_v(head: str, ratio: float) -> dict:
    """One training setting of Table V, tested at every ratio when the head is bridging
    (the rows of Table III(c))."""
    return {"overrides": {"model.head": head,
                          "masking.name": "cell_running" if ratio else "none",
                          "masking.ratio": ratio, "train.rec_weight": 0.1 if ratio else 0.0},
            "test_ratios": [0.0, 0.25, 0.5, 0.75] if head == "bridging" else [ratio]}


def experiments(tables: list[str], ratios: list[float],
                from_pretrained: bool = False) -> dict[str, dict]:
    """name -> {overrides, test_ratios[, same_as, report, pretrained]}.

    ``same_as`` names the run that already is this setting (its cache entry is shared);
    ``report`` is the subset of test ratios this table shows; ``pretrained`` starts the
    fine-tuning from a `mar pretrain` run of the same seed. ``from_pretrained`` starts
    every run of Tables II, III(c), V and IX(a) there too (IX(b) and Fig. 1 have their
    own scratch and pretrained arms)."""
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
    if "IXa" in tables:  # the MAR setting (bridging, cell running 50 %) with each lambda
        for lam in (0.0, 0.1, 0.2, 0.4, 1.0):
            out[f"IXa/{lam:g}"] = {"overrides": {**table_v("bridging", 0.5)["overrides"],
                                                 "train.rec_weight": lam},
                                   "test_ratios": [0.5]}
        out["IXa/0.1"] = {**table_v("bridging", 0.5), "report": [0.5],
                          "same_as": "V/bridging/0.5"}
    if "IXb" in tables:  # scratch vs pretrained, for both heads (Table V on pretrained)
        for head, r in (("linear", 0.0), ("bridging", 0.0), ("linear", 0.5),
                        ("bridging", 0.5)):
            setting = table_v(head, r)
            report = [0.0, 0.5] if head == "bridging" else [r]
            out[f"IXb/scratch/{head}/{r:g}"] = {**setting, "report": report,
                                                "same_as": f"V/{head}/{r:g}"}
            out[f"IXb/pretrained/{head}/{r:g}"] = {**setting, "report": report,
                                                   "pretrained": True}
    if "Fig1" in tables:  # standard (VideoMAE's fine-tuning) vs MAR, same pretrained encoder
        for arm, head, r in (("standard", "linear", 0.0), ("mar50", "bridging", 0.5),
                             ("mar75", "bridging", 0.75)):
            out[f"Fig1/{arm}"] = {**table_v(head, r), "report": [r], "pretrained": True,
                                  "gflops": r}
            if r < 0.75:  # IX(b) trains these two
                out[f"Fig1/{arm}"]["same_as"] = f"IXb/pretrained/{head}/{r:g}"
        for arm, head, r in (("standard", "linear", 0.0), ("mar50", "bridging", 0.5)):
            out[f"Fig1/{arm}-scratch"] = {**table_v(head, r), "report": [r],
                                          "same_as": f"V/{head}/{r:g}", "gflops": r}
    if from_pretrained:  # and the pretrained arms of IX(b) and Fig. 1 are their runs
        alias = {f"V/{head}/{r:g}": f"IXb/pretrained/{head}/{r:g}"
                 for head in ("linear", "bridging") for r in (0.0, 0.5)}
        alias["V/bridging/0.75"] = "Fig1/mar75"
        for name, spec in out.items():
            if name.split("/")[0] in ("V", "IIIc", "II", "IXa"):
                spec["pretrained"] = True
                shared = alias.get(spec.get("same_as", name))
                if shared:
                    spec["same_as"] = shared
    return out


def gflops(demo: DemoConfig, spec: dict, num_classes: int) -> float:
    """Per-view GFLOPs of a run's model at its test masking."""
    o = spec["overrides"]
    ratio = spec["gflops"]
    return model_cost(demo.model, make_masking("cell_running", ratio) if ratio else None,
                      head=o["model.head"], num_frames=demo.num_frames, img_size=demo.size,
                      patch_size=demo.patch_size, num_classes=num_classes).gflops


def study_config(demo: DemoConfig, data: Path, overrides: dict) -> Config:
    """The MAR setting of `mar demo` with ``overrides`` (dotted keys) applied, on the
    benchmark at ``data``."""
    return build_config(config_tree(run_config(demo, data, mar=True)), overrides,
                        where="study")


def suffix(settings: dict) -> str:
    """``settings`` as they appear in cache keys and run folders: ``,key=value`` each."""
    return "".join(f",{k}={v}" for k, v in sorted(settings.items()))


def pretrain(demo: DemoConfig, data: Path, seed: int, epochs: int, out: Path,
             overrides: dict | None = None) -> dict:
    """A `mar pretrain` run on the training videos (the `mar demo` pretraining); also the
    reconstruction loss over its last 20 % of steps and the trivial predictor's."""
    cfg = pretrain_config(replace(demo, pretrain_epochs=epochs), data,
                          **{"train.seed": seed, **(overrides or {})})
    run_dir = out / "pretrain" / f"seed{seed}-epochs{epochs}{suffix(overrides or {})}"
    summary = train(cfg, run_dir, overwrite=True)
    return {**pretrain_summary(cfg, run_dir), "train_s": summary["wall_time_s"]}


def run_one(demo: DemoConfig, data: Path, spec: dict, seed: int, out: Path,
            init: str | None = None, settings: dict | None = None) -> dict:
    overrides = {**spec["overrides"], **(settings or {}), "train.seed": seed}
    if init:
        overrides["train.init"] = init
    cfg = study_config(demo, data, overrides)
    run_dir = out / "work" / f"seed{seed}"
    summary = train(cfg, run_dir, overwrite=True)
    from mar.inference import load_model

    model, cfg = load_model(run_dir / "best")
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
                        help="length of the `mar pretrain` run behind Table IX(b) and Fig. 1")
    parser.add_argument("--pretrain-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of that pretraining, e.g. model.norm_target=true "
                        "(VideoMAE's normalised target; the demo's default is raw pixels)")
    parser.add_argument("--from-pretrained", action="store_true",
                        help="Tables II, III(c), V and IX(a) fine-tune from the seed's "
                        "`mar pretrain` encoder instead of random weights")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of every fine-tuning run, e.g. train.layer_decay=0.75 "
                        "(part of the cache key)")
    parser.add_argument("--kind", choices=("shapes", "natural"), default="shapes",
                        help="the embedded benchmark (docs/natural_benchmark.md)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="run seeds first-seed .. first-seed + seeds - 1 (several "
                        "processes may share --out, one seed range each)")
    parser.add_argument("--out", default="study")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = DemoConfig(out=str(out), epochs=args.epochs, size=args.size,
                      patch_size=args.patch, num_frames=args.frames)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    data = out / "data"
    synthesize(data, SynthConfig(num_frames=demo.num_frames, size=demo.size,
                                 per_class_train=demo.per_class_train,
                                 per_class_val=demo.per_class_val, seed=0, kind=args.kind))
    num_classes = len(read_class_names(data / "classes.txt"))
    cache_file = out / "runs.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    specs = experiments(args.tables, args.ratios, args.from_pretrained)
    # the demo's pretraining target unless set; always in the cache key
    pre_set = {"model.norm_target": str(demo.norm_target).lower(),
               **dict(a.split("=", 1) for a in args.pretrain_set)}
    ft_set = dict(a.split("=", 1) for a in args.set)
    # the cache knows the benchmark and the pretraining it was made with
    bench = "" if (args.kind, args.size, args.patch) == ("shapes", 64, 16) else \
        f"{args.kind}{args.size}p{args.patch}/"
    if args.frames != 16:
        bench = f"{bench.rstrip('/') or args.kind}f{args.frames}/"
    pre_key = f"pretrain/epochs{args.pretrain_epochs}{suffix(pre_set)}"

    def key(name: str, spec: dict, seed: int) -> str:
        pre = f"/{pre_key}" if spec.get("pretrained") else ""
        return (f"{bench}{spec.get('same_as', name)}/seed{seed}/epochs{args.epochs}"
                f"{suffix(ft_set)}{pre}")

    def save() -> None:  # other processes (--first-seed) may have added their runs
        on_disk = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        cache.update({k: v for k, v in on_disk.items() if k not in cache})
        write_text(cache_file, json.dumps(cache, indent=1))

    def pretrained(seed: int) -> dict:
        pk = f"{bench}{pre_key}/seed{seed}"
        if pk not in cache:
            cache[pk] = pretrain(demo, data, seed, args.pretrain_epochs, out, pre_set)
            save()
            print(f"{pk}: loss {cache[pk]['loss_last20']:.4f} (trivial "
                  f"{cache[pk]['trivial_loss']:.4f})", flush=True)
        return cache[pk]

    start = time.perf_counter()
    if "pretrain" in args.tables:
        for seed in seeds:
            pretrained(seed)
    for name, spec in specs.items():
        for seed in seeds:
            k = key(name, spec, seed)
            if k in cache:
                continue
            init = pretrained(seed)["dir"] if spec.get("pretrained") else None
            cache[k] = run_one(demo, data, spec, seed, out, init, ft_set)
            save()
            print(f"{k}: {cache[k]['top1']} ({time.perf_counter() - start:.0f}s so far)",
                  flush=True)
    lines = [f"{args.kind} benchmark, {demo.num_frames} x {demo.size}² at patch "
             f"{demo.patch_size}; chance: {100 / num_classes:.1f} %; {args.seeds} seeds; "
             f"{args.epochs} epochs", "",
             "| setting | test ratio | top-1 % mean ± std | runs | train s (mean) |",
             "|---|--:|--:|--:|--:|"]
    rows, points = [], []
    for name, spec in specs.items():
        runs = [cache[key(name, spec, s)] for s in seeds]
        for ratio in spec.get("report", spec["test_ratios"]):
            accs = [r["top1"][str(ratio)] for r in runs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            rows.append((f"{name} @ {'trained' if ratio is None else f'{ratio:g}'}", accs))
            lines.append(f"| {name} | {ratio if ratio is not None else 'as trained'} | "
                         f"{statistics.mean(accs):.1f} ± {std:.1f} | {len(accs)} | "
                         f"{statistics.mean(r['train_s'] for r in runs):.0f} |")
        if "gflops" in spec:
            points.append((name.split("/")[-1], gflops(demo, spec, num_classes), accs))
    if "pretrain" in args.tables or any(s.get("pretrained") for s in specs.values()):
        pre = [cache[f"{bench}{pre_key}/seed{s}"] for s in seeds]
        loss = [p["loss_last20"] for p in pre]
        lines += ["", f"pretraining ({pre_key.split('/', 1)[1]}, tube 90 %): "
                  f"{statistics.mean(p['train_s'] for p in pre):.0f} s per seed, not "
                  f"included above; reconstruction loss over its last 20 % of steps "
                  f"{statistics.mean(loss):.4f} (seeds: "
                  f"{', '.join(f'{v:.4f}' for v in loss)}), trivial predictor "
                  f"{statistics.mean(p['trivial_loss'] for p in pre):.4f}"]
    if points:
        lines += ["", "| Fig. 1 arm | GFLOPs per view | top-1 % mean ± std |",
                  "|---|--:|--:|"]
        lines += [f"| {n} | {g:.3f} | {statistics.mean(a):.1f} ± "
                  f"{statistics.stdev(a) if len(a) > 1 else 0.0:.1f} |" for n, g, a in points]
    table = "\n".join(lines)
    print(table)
    stem = "results_" + "_".join(args.tables)
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / f'{stem}.md'} and {plot(rows, out / f'{stem}.png', num_classes)}")
    if points:
        print(f"wrote {plot_fig1(points, out / 'fig1.png', num_classes)}")


def plot(rows: list[tuple[str, list[float]]], path: Path, num_classes: int) -> Path:
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
    ax.axvline(100 / num_classes, color="gray", ls=":", label="chance")
    ax.set_yticks(list(y), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("video top-1 % (mean ± std over seeds; dots: seeds)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_fig1(points: list[tuple[str, float, list[float]]], path: Path,
              num_classes: int) -> Path:
    """The paper's Fig. 1: top-1 (mean ± std, seeds as dots) against GFLOPs per view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"standard": "standard, all tokens", "mar50": "MAR 50 %",
              "mar75": "MAR 75 %"}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, g, accs in points:
        color = "tab:gray" if name.startswith("standard") else "tab:red"
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        scratch = name.endswith("-scratch")
        ax.errorbar([g], [statistics.mean(accs)], yerr=[std], fmt="o", color=color,
                    capsize=4, mfc="white" if scratch else color)
        name = name.removesuffix("-scratch")
        name = labels.get(name, name) + (" from scratch" if scratch else "")
        ax.scatter([g] * len(accs), accs, s=10, color="black", zorder=3)
        ax.annotate(name, (g, statistics.mean(accs)),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(100 / num_classes, color="gray", ls=":", label="chance")
    ax.set_xlabel("GFLOPs per view")
    ax.set_ylabel("video top-1 % (mean ± std; dots: seeds)")
    ax.set_title("filled: same pretrained encoder; hollow: from scratch", fontsize=9)
    ax.set_xlim(0, 1.9 * max(g for _, g, _ in points))  # room for the labels
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
