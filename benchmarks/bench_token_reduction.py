"""MAR against training-free token reduction on the same model (docs/token_reduction.md).

Three fine-tuned arms per seed, the `mar demo` setting (vit_nano, 16 x 64^2 clips; ``--depth``
changes only the encoder's depth) with the same bridging head, so the arms differ only in
MAR's training: ``standard`` (all tokens, no reconstruction), ``MAR`` (cell running 50 %,
reconstruction weight 0.1) and ``MAR75`` (cell running 75 %, the same otherwise). Each is
tested with every token, and at matched token budgets (default 50 % and 25 % of the
tokens) with: random drop, ToMe, RLT (two rules for a tubelet's change: ours and the
published code's), RLT + MAR, and the cell running mask (on a MAR arm tested at its own
ratio that is MAR as trained; on the standard arm it shows what the mask is worth without
MAR's training). Reported: video top-1 (mean ± std over seeds), GFLOPs per view (RLT:
mean over the test clips), mean tokens entering the encoder, CPU latency at batch 1 and 8
(median of repeats, seed-0 MAR model, the same test clips for every method), and the
paired per-seed differences that decide each verdict (the rule of docs/results.md).

How the budgets are matched: random drop and the cell running mask keep ``budget`` of the
tokens; RLT's threshold is calibrated on unlabelled training clips so that its mean kept
fraction is ``budget``; RLT + MAR uses the cell running ratio 1 - sqrt(budget) rounded to
the 2 x 2 cell (50 % -> 25 %, 25 % -> 50 %) and a threshold calibrated for the rest; ToMe
merges the constant r per block whose GFLOPs are nearest the cell running mask's at that
budget (its token count shrinks block by block, so FLOPs are the fair match): ToMe's
authors' schedule, the same r in every block.

    python benchmarks/bench_token_reduction.py --out bench-reduce            # synthetic
    python benchmarks/bench_token_reduction.py --data DIR --size 64 --frames 16 --patch 8
    python benchmarks/bench_token_reduction.py --data DIR ... --depth 12 --out OTHER

``--data`` is any folder with ``train.csv``, ``val.csv`` and ``classes.txt`` as written
by ``mar data synth`` (default: the synthetic benchmark, built under ``--out``). Trained
runs are cached in ``--out/runs.json``, so an interrupted run continues, and several
processes may share ``--out`` with one ``--first-seed`` (or one ``--arms``) each. Cost:
nine trainings of about 80 s each on an idle 2-core machine (the same setting as
docs/results.md), 12 minutes in all; with the cores shared it takes several times that
(docs/token_reduction.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from noise_rule import paired

from mar.atomic import write_file, write_text
from mar.config import Config, build_config, config_tree
from mar.data import read_list
from mar.data.synth import SynthConfig, synthesize
from mar.demo import DemoConfig, run_config
from mar.engine.trainer import train
from mar.flops import formula_flops, reduction_flops
from mar.inference import load_model
from mar.masking import Mask, make_masking
from mar.models.token_reduction import (
    TokenReduction,
    calibrate_rlt_threshold,
    tubelet_change,
)

ARMS = {"standard": {"masking.name": "none", "masking.ratio": 0.0, "train.rec_weight": 0.0},
        "MAR": {"masking.name": "cell_running", "masking.ratio": 0.5,
                "train.rec_weight": 0.1},
        "MAR75": {"masking.name": "cell_running", "masking.ratio": 0.75,
                  "train.rec_weight": 0.1}}
# the table's name of each arm, and the budgets it is shown at (None: all)
SHOWN = {"standard": ("standard", None), "MAR": ("MAR 50 %", None),
         "MAR75": ("MAR 75 %", (0.25,))}


def arm_config(demo: DemoConfig, data: Path, arm: str, seed: int,
               depth: int | None = None) -> Config:
    """The `mar demo` MAR setting with the arm's masking and loss; bridging head in all.
    ``depth``: encoder blocks (None: vit_nano's 4), the head and decoder unchanged."""
    tree = config_tree(run_config(demo, data, mar=True))  # the class count of ``data``
    overrides = {**ARMS[arm], "train.seed": seed, "eval_masking": None}
    if depth is not None:
        overrides["model.depth"] = depth
    return build_config(tree, overrides, where=f"bench_token_reduction {arm}")


def run_key(arm: str, seed: int, epochs: int, depth: int | None) -> str:
    return f"{arm}/seed{seed}/epochs{epochs}" + (f"/depth{depth}" if depth else "")


def load_clips(cfg: Config, records, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One centre view per video, decoded once: (V, C, T, H, W) and labels (V,)."""
    dataset = cfg.views_dataset(records[:limit] if limit else records, 1, 1)
    items = [dataset[i] for i in range(len(dataset))]
    items = [it for it in items if it["valid"]]
    return (torch.cat([it["video"] for it in items]),
            torch.tensor([it["label"] for it in items]))


def cell_ratio(budget: float) -> float:
    """RLT + MAR's cell running ratio: 1 - sqrt(budget), rounded to quarters (2 x 2)."""
    return round((1 - math.sqrt(budget)) * 4) / 4


def setting_names(budgets: list[float]) -> list[str]:
    """The names :func:`settings` gives, in its order."""
    return ["all tokens"] + [f"{m} {b:.0%}" for b in budgets for m in (
        "cell running", "random", "ToMe", "RLT", "RLT published", "RLT+MAR")]


def settings(model, budgets: list[float], calib: torch.Tensor, grid) -> dict[str, dict]:
    """name -> TokenReduction arguments (+ the budget), for one model."""
    n = math.prod(grid)
    pe = model.encoder.patch_embed
    changes = tubelet_change(calib, pe.patch_size, pe.tubelet_size)
    published = tubelet_change(calib, pe.patch_size, pe.tubelet_size, "published")
    out = {"all tokens": {"method": "none", "budget": 1.0}}
    for b in budgets:
        rho = 1 - b
        target = formula_flops(model, n - int(rho * n + 1e-6))
        r = min(range(n // 2 + 1), key=lambda r: abs(formula_flops(model, n, r) - target))
        mar_rho = cell_ratio(b)
        visible = ~make_masking("cell_running", mar_rho)(len(calib), grid, train=False).bool()
        out.update({
            f"cell running {b:.0%}": {"method": "cell", "ratio": rho, "budget": b},
            f"random {b:.0%}": {"method": "random", "ratio": rho, "budget": b},
            f"ToMe {b:.0%}": {"method": "tome", "tome_r": r, "budget": b},
            f"RLT {b:.0%}": {"method": "rlt", "budget": b,
                             "rlt_threshold": calibrate_rlt_threshold(changes, b)},
            f"RLT published {b:.0%}": {
                "method": "rlt", "budget": b, "rlt_rule": "published",
                "rlt_threshold": calibrate_rlt_threshold(published, b, rule="published")},
            f"RLT+MAR {b:.0%}": {"method": "rlt+mar", "ratio": mar_rho, "budget": b,
                                 "rlt_threshold": calibrate_rlt_threshold(changes, b,
                                                                          visible)},
        })
    assert list(out) == setting_names(budgets)
    return out


def build(model, spec: dict, seed: int):
    """(callable video -> logits, reducer or None, fixed FLOPs or None, tokens or None)."""
    kw = {k: v for k, v in spec.items() if k not in ("method", "budget")}
    if spec["method"] == "cell":  # the deterministic evaluation mask, drawn once
        mask = make_masking("cell_running", spec["ratio"])(1, model.grid, train=False)

        def run(video):
            b = video.shape[0]
            m = Mask(mask.ids_keep.expand(b, -1), mask.ids_mask.expand(b, -1), mask.grid)
            return model.classify(video, m)

        return run, None, formula_flops(model, mask.num_visible), mask.num_visible
    reducer = TokenReduction(model, spec["method"], seed=seed, **kw).eval()
    return reducer, reducer, None, None


@torch.no_grad()
def evaluate(model, spec: dict, clips, labels, seed: int, batch: int = 32) -> dict:
    run, reducer, gflops, kept = build(model, spec, seed)
    correct = 0
    for i in range(0, len(clips), batch):
        correct += int((run(clips[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    if reducer is not None:
        gflops, kept = reduction_flops(reducer), reducer.mean_kept_tokens()
    return {"top1": 100 * correct / len(clips), "gflops": gflops / 1e9, "kept": kept}


@torch.no_grad()
def latency_ms(model, specs: dict[str, dict], clips, batch: int,
               repeats: int) -> dict[str, float]:
    """Median wall time (ms) of one forward at ``batch`` per setting. The settings take
    turns within each repeat (so a slow spell of the shared machine hits all alike), and
    the repeats cycle through the test clips (RLT's cost depends on the clip)."""
    runs = {name: build(model, spec, 0)[0] for name, spec in specs.items()}
    for run in runs.values():
        run(clips[:batch])                               # warm-up
    times = {name: [] for name in runs}
    for k in range(repeats):
        start = (k * batch) % max(len(clips) - batch, 1)
        video = clips[start:start + batch]
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(video)
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="folder with train.csv, val.csv, classes.txt (default: "
                        "the synthetic benchmark under --out)")
    parser.add_argument("--out", default="bench-reduce")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--patch", type=int, default=16,
                        help="patch size (8 at 64^2: the 8 x 8 token grid of the natural "
                        "benchmark)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="train seeds first-seed .. first-seed + seeds - 1 (several "
                        "processes may share --out, one seed range each)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--depth", type=int, default=None,
                        help="encoder blocks (default: vit_nano's 4; 12: the 12-block "
                        "model of the same width, docs/token_reduction.md)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="arms to train and report (several processes may share "
                        "--out, one arm each)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--calib-clips", type=int, default=96,
                        help="unlabelled training clips that calibrate RLT's threshold")
    parser.add_argument("--repeats", type=int, default=20, help="latency repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = DemoConfig(out=str(out), epochs=args.epochs, size=args.size,
                      num_frames=args.frames, patch_size=args.patch)
    data = Path(args.data) if args.data else out / "data"
    if args.data is None:
        synthesize(data, SynthConfig(num_frames=demo.num_frames, size=demo.size,
                                     per_class_train=demo.per_class_train,
                                     per_class_val=demo.per_class_val, seed=0))
    for name in ("train.csv", "val.csv", "classes.txt"):
        if not (data / name).is_file():
            raise SystemExit(f"--data {data}: no {name} (write one with `mar data synth`)")
    cache_file = out / "runs.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    start = time.perf_counter()
    clips = labels = calib = None
    latency_model = None
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        for arm in args.arms:
            key = run_key(arm, seed, args.epochs, args.depth)
            cfg = arm_config(demo, data, arm, seed, args.depth)
            done = key in cache and set(cache[key]["specs"]) == set(setting_names(args.budgets))
            if done and not (seed == 0 and arm == "MAR" and args.repeats):
                continue
            run_dir = out / "runs" / key.replace("/", "-")
            if not (run_dir / "best").is_dir():
                summary = train(cfg, run_dir, overwrite=True)
                train_s = summary["wall_time_s"]
            else:
                train_s = cache.get(key, {}).get("train_s", float("nan"))
            model, cfg = load_model(run_dir / "best")
            if clips is None:
                clips, labels = load_clips(cfg, read_list(cfg.data.test_list, cfg.data.root))
                calib = load_clips(cfg, read_list(cfg.data.train_list, cfg.data.root)[::5],
                                   args.calib_clips)[0]
            specs = settings(model, args.budgets, calib, model.grid)
            if cache_file.is_file():  # another process may have added its runs
                cache = {**json.loads(cache_file.read_text()), **cache}
            if key not in cache or set(cache[key]["specs"]) != set(specs):  # new settings
                results = {name: evaluate(model, spec, clips, labels, seed)
                           for name, spec in specs.items()}
                cache[key] = {"train_s": train_s, "results": results, "specs": specs,
                              "clips": len(clips)}
                if cache_file.is_file():
                    cache = {**json.loads(cache_file.read_text()), **cache}
                write_text(cache_file, json.dumps(cache, indent=1))
                print(f"{key}: " + ", ".join(f"{k} {v['top1']:.1f}"
                                             for k, v in results.items())
                      + f" ({time.perf_counter() - start:.0f} s so far)", flush=True)
            if seed == 0 and arm == "MAR":
                latency_model = (model, specs)
    latency = {}
    if latency_model and args.repeats:
        model, specs = latency_model
        by_batch = [latency_ms(model, specs, clips, b, args.repeats) for b in (1, 8)]
        latency = {name: [t[name] for t in by_batch] for name in specs}
    table = report(cache, args, seeds, latency)
    print(table)
    write_text(out / "token_reduction.md", table + "\n")
    png = write_file(out / "token_reduction.png", lambda p: plot(cache, args, seeds, p))
    print(f"wrote {out / 'token_reduction.md'} and {png} "
          f"({time.perf_counter() - start:.0f} s)")


NAMES = {"none": "all tokens", "cell": "cell running mask", "random": "random drop",
         "tome": "ToMe", "rlt": "RLT", "rlt+mar": "RLT + MAR"}
MARKERS = {"standard": "s", "MAR": "o", "MAR75": "^"}


def label(arm: str, spec: dict) -> str:
    """A row's method: the cell mask is "MAR (trained)" only at the ratio it was trained."""
    m = spec["method"]
    if m == "cell":
        trained = ARMS[arm]["masking.ratio"]
        if not trained:
            return "cell running mask, untrained"
        if abs(trained - spec["ratio"]) < 1e-6:
            return "MAR (trained)"
        return f"cell running mask at {spec['ratio']:.0%} (trained at {trained:.0%})"
    if m == "rlt" and spec.get("rlt_rule") == "published":
        return "RLT, published rule"
    return NAMES[m]


def rows(cache: dict, args, seeds: list[int]) -> list[dict]:
    """One row per (arm, setting) shown: mean ± std over seeds, and the per-seed top-1."""
    out = []
    for arm in args.arms:
        runs = [cache[run_key(arm, s, args.epochs, args.depth)] for s in seeds]
        shown = SHOWN[arm][1]
        for name, spec in runs[0]["specs"].items():
            if shown is not None and spec["budget"] < 1 and spec["budget"] not in shown:
                continue
            res = [r["results"][name] for r in runs]
            accs = [r["top1"] for r in res]
            out.append({"arm": arm, "setting": name, "label": label(arm, spec), "spec": spec,
                        "accs": accs, "top1": statistics.mean(accs),
                        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                        "gflops": statistics.mean(r["gflops"] for r in res),
                        "kept": statistics.mean(r["kept"] for r in res),
                        "train_s": statistics.mean(r["train_s"] for r in runs)})
    return out


def _knob(spec: dict) -> str:
    m = spec["method"]
    if m == "tome":
        return f"r={spec['tome_r']}/block"
    if m == "rlt":
        return f"τ={spec['rlt_threshold']:.3g}"
    if m == "rlt+mar":
        return f"τ={spec['rlt_threshold']:.3g}, cell {spec['ratio']:.0%}"
    if m in ("random", "cell"):
        return f"drop {spec['ratio']:.0%}"
    return ""


def comparisons(table: list[dict]) -> list[str]:
    """The paired per-seed differences behind the verdicts: each MAR arm's own mask (and
    its all-token score) against every setting of the standard model at the same budget,
    the two MAR arms' masks at 25 %, RLT's two rules on each model, and random drop
    against the other training-free settings on the standard model; the rule of
    docs/results.md."""
    by = {(r["arm"], r["setting"]): r for r in table}
    lines = []
    for r in table:
        if r["arm"] == "standard" or r["spec"]["method"] not in ("cell", "none"):
            continue
        b = r["spec"]["budget"]
        for other in table:
            if other["arm"] == "standard" and other["spec"]["budget"] == b:
                diffs = [round(x - y, 2) for x, y in zip(r["accs"], other["accs"],
                                                        strict=True)]
                lines.append(f"- {SHOWN[r['arm']][0]} {r['label']} - standard "
                             f"{other['label']} ({b:.0%}): {paired(diffs)}")
    pairs = [("cell running 25 %: trained at 75 % - trained at 50 %",
              ("MAR75", "cell running 25%"), ("MAR", "cell running 25%"))]
    pairs += [(f"{SHOWN[arm][0]} model, {b}: RLT published rule - ours (mean)",
               (arm, f"RLT published {b}"), (arm, f"RLT {b}"))
              for arm in ARMS for b in ("50%", "25%")]
    pairs += [(f"standard model, {b}: random drop - {other}",
               ("standard", f"random {b}"), ("standard", f"{other} {b}"))
              for b in ("50%", "25%")
              for other in ("cell running", "ToMe", "RLT", "RLT published", "RLT+MAR")]
    for text, a, b in pairs:
        if a in by and b in by:
            diffs = [round(x - y, 2) for x, y in zip(by[a]["accs"], by[b]["accs"],
                                                    strict=True)]
            lines.append(f"- {text}: {paired(diffs)}")
    return lines


def report(cache: dict, args, seeds: list[int], latency: dict) -> str:
    num_clips = cache[run_key(args.arms[0], seeds[0], args.epochs, args.depth)]["clips"]
    blocks = f"{args.depth} blocks" if args.depth else "vit_nano (4 blocks)"
    lat = (f"latency: seed-0 MAR model, {args.threads} CPU thread(s), median of "
           f"{args.repeats}" if latency else "latency not measured (--repeats 0)")
    table = rows(cache, args, seeds)
    lines = [f"{len(seeds)} seeds x {len(args.arms)} arms, {blocks}, {args.epochs} epochs, "
             f"{num_clips} test clips (one view each); {lat}", "",
             "| model | method | budget | setting | tokens in (mean) | GFLOPs/view "
             "| top-1 % mean ± std |" + (" ms @ b1 | ms @ b8 |" if latency else ""),
             "|---|---|--:|---|--:|--:|--:|" + ("--:|--:|" if latency else "")]
    for r in table:
        t = latency.get(r["setting"]) if r["arm"] == "MAR" else None
        ms = (f" {t[0]:.1f} | {t[1]:.1f} |" if t else " | |") if latency else ""
        lines.append(f"| {SHOWN[r['arm']][0]} | {r['label']} | {r['spec']['budget']:.0%} "
                     f"| {_knob(r['spec'])} | {r['kept']:.1f} | {r['gflops']:.4f} "
                     f"| {r['top1']:.1f} ± {r['std']:.1f} |{ms}")
    if len(seeds) > 1:
        lines += ["", "Paired per-seed differences (top-1 points; a difference counts when "
                  "it exceeds 2 SE of the paired difference):", "", *comparisons(table)]
    return "\n".join(lines)


def plot(cache: dict, args, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = {"none": "black", "cell": "tab:red", "random": "tab:gray", "tome": "tab:blue",
               "rlt": "tab:green", "rlt+mar": "tab:purple"}
    seen = set()
    for r in rows(cache, args, seeds):
        m = r["spec"]["method"]
        colour = "tab:olive" if r["label"] == "RLT, published rule" else colours[m]
        legend = None
        if (r["label"], r["arm"]) not in seen:
            seen.add((r["label"], r["arm"]))
            legend = f"{r['label']} ({SHOWN[r['arm']][0]} model)"
        ax.errorbar(r["gflops"], r["top1"], yerr=r["std"], fmt=MARKERS[r["arm"]],
                    color=colour, mfc="none" if r["arm"] == "standard" else colour,
                    capsize=2, label=legend)
    ax.set_xlabel("GFLOPs per view (RLT: mean over clips)")
    ax.set_ylabel("video top-1 % (mean ± std over seeds)")
    ax.set_title("Token reduction on the same model: open = standard, filled = MAR-trained "
                 "(o 50 %, ^ 75 %)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
