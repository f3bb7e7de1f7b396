"""``mar demo``: MAR against standard training on the synthetic benchmark, on a laptop.

1. synthesize the dataset (cached); 2. fine-tune a tiny ViT twice with the same budget:
standard training (all tokens, linear head) and MAR (cell running 50 %, bridging
classifier, reconstruction branch); 3. evaluate both, also at other test ratios; 4.
print a table (top-1, GFLOPs per view, clips/s, training time) and save an
accuracy-vs-GFLOPs plot (paper Fig. 1) and a reconstruction picture (Fig. 6).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `mar --help` reads DemoConfig without torch
    from .config import Config


@dataclass(frozen=True)
class DemoConfig:
    out: str = "mar-demo"
    data: str | None = None  # default: <out>/data
    model: str = "vit_nano"
    size: int = 64
    num_frames: int = 16
    patch_size: int = 16
    per_class_train: int = 40
    per_class_val: int = 12
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    workers: int = 0


def run_config(demo: DemoConfig, data: Path, mar: bool) -> Config:
    """The fine-tuning config of one arm of the comparison."""
    from .config import build_config
    from .data.synth import CLASSES

    common = {
        "model.name": demo.model, "model.num_classes": len(CLASSES),
        "model.num_frames": demo.num_frames, "model.img_size": demo.size,
        "model.patch_size": demo.patch_size, "model.head_dropout": 0.0,
        "data.root": str(data), "data.train_list": str(data / "train.csv"),
        "data.val_list": str(data / "val.csv"), "data.test_list": str(data / "val.csv"),
        "data.class_names": str(data / "classes.txt"), "data.sampling": "segment",
        "data.num_frames": demo.num_frames, "data.crop_size": demo.size,
        "data.scale": [0.6, 1.0], "data.flip_prob": 0.0, "data.rand_augment": None,
        "data.erase_prob": 0.0, "data.mixup": 0.0, "data.cutmix": 0.0,
        "data.label_smoothing": 0.1, "data.num_workers": demo.workers,
        "data.cache_decoded": demo.workers == 0,
        "data.test_clips": 1, "data.test_crops": 1,
        "train.epochs": demo.epochs, "train.batch_size": demo.batch_size,
        "train.base_lr": demo.lr, "train.lr_scaling": False, "train.warmup_epochs": 2,
        "train.min_lr": demo.lr / 20, "train.layer_decay": 1.0, "train.seed": demo.seed,
        "train.eval_every": demo.epochs, "train.device": "cpu", "eval.batch_size": 32,
    }
    arm = ({"model.head": "bridging", "masking.name": "cell_running", "masking.ratio": 0.5,
            "train.rec_weight": 0.1} if mar else
           {"model.head": "linear", "masking.name": "none", "masking.ratio": 0.0,
            "train.rec_weight": 0.0})
    return build_config({}, {**common, **arm}, where="mar demo")


def clips_per_second(model, masking, grid_batch: int = 16, repeats: int = 3) -> float:
    """Inference throughput on random clips (median of ``repeats`` timed batches)."""
    import torch

    pe = model.encoder.patch_embed
    t, h, w = model.grid
    video = torch.randn(grid_batch, 3, t * pe.tubelet_size, h * pe.patch_size,
                        w * pe.patch_size)
    mask = masking(grid_batch, model.grid, train=False)
    model.eval()
    times = []
    with torch.no_grad():
        model.forward_head(model.forward_features(video, mask), mask)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.forward_head(model.forward_features(video, mask), mask)
            times.append(time.perf_counter() - start)
    return grid_batch / sorted(times)[len(times) // 2]


def run_demo(demo: DemoConfig = DemoConfig()) -> dict:
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from .data.synth import CLASSES, SynthConfig, synthesize
    from .engine.distributed import init_distributed
    from .engine.evaluate import run_eval
    from .engine.trainer import train
    from .flops import formula_flops
    from .inference import load_run
    from .masking import make_masking

    console = Console()
    out = Path(demo.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(demo.data) if demo.data else out / "data"
    synth = SynthConfig(num_frames=demo.num_frames, size=demo.size,
                        per_class_train=demo.per_class_train,
                        per_class_val=demo.per_class_val, seed=demo.seed)
    total = len(CLASSES) * (synth.per_class_train + synth.per_class_val)
    with tqdm(total=total, desc="synthesizing videos", dynamic_ncols=True) as bar:
        made = synthesize(data, synth, progress=bar.update)
    console.print(f"dataset: {data} ({len(CLASSES)} classes, "
                  f"{len(CLASSES) * synth.per_class_train} train / "
                  f"{len(CLASSES) * synth.per_class_val} val videos"
                  f"{', cached' if made['cached'] else ''})")
    info = init_distributed("cpu")
    rows = {}
    for name, mar in (("standard", False), ("MAR", True)):
        cfg = run_config(demo, data, mar)
        what = ("cell running 50 %, bridging, reconstruction" if mar
                else "all tokens, linear head")
        console.rule(f"{name}: {what}")
        summary = train(cfg, out / name, overwrite=True)
        model, cfg = load_run(out / name / _last(out / name))
        rows[name] = {"top1": summary["test_video_top1"],
                      "gflops": summary["gflops_per_view"],
                      "clips_s": clips_per_second(model, cfg.test_masking()),
                      "train_s": summary["wall_time_s"], "params_m": summary["params_m"]}
        if mar:  # the same MAR model tested at other ratios (Table III(c))
            curve = []
            for ratio in (0.0, 0.25, 0.5, 0.75):
                masking = make_masking("cell_running", ratio)
                result = run_eval(cfg, model, "test", info, masking=masking)
                mask = masking(1, model.grid, train=False)
                curve.append((ratio, formula_flops(model, mask.num_visible) / 1e9,
                              result.video_top1))
            rows[name]["ratios"] = curve
            mar_model, mar_cfg = model, cfg
    table = Table(title="mar demo: standard training vs MAR, same budget "
                  f"({demo.epochs} epochs, {demo.model}, {demo.num_frames}x{demo.size}^2)")
    for col in ("", "top-1 %", "GFLOPs/view", "clips/s (inference)", "train time s",
                "params M"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, f"{r['top1']:.1f}", f"{r['gflops']:.3f}", f"{r['clips_s']:.0f}",
                      f"{r['train_s']:.0f}", f"{r['params_m']:.2f}")
    console.print(table)
    console.print(f"chance is {100 / len(CLASSES):.1f} %. MAR tested at other ratios: " +
                  ", ".join(f"{int(100 * r)}% -> {a:.1f} %" for r, _, a in rows["MAR"]["ratios"]))
    plot = _plot(rows, out / "accuracy_vs_gflops.png")
    picture = _reconstruction(mar_model, mar_cfg, data, out)
    (out / "demo.json").write_text(json.dumps(rows, indent=1))
    console.print(f"wrote {plot}, {picture} and {out / 'demo.json'}")
    return rows


def _last(run: Path) -> str:
    return "best" if (run / "best").is_dir() else sorted(run.glob("checkpoint-*"))[-1].name


def _plot(rows: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    s = rows["standard"]
    ax.scatter([s["gflops"]], [s["top1"]], s=80, marker="s", color="tab:gray",
               label="standard training (all tokens, linear)")
    ratios = rows["MAR"]["ratios"]
    ax.plot([g for _, g, _ in ratios], [a for _, _, a in ratios], "o-", color="tab:red",
            label="MAR (trained at 50 %), tested at 0/25/50/75 %")
    for r, g, a in ratios:
        ax.annotate(f"{int(100 * r)}%", (g, a), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("GFLOPs per view")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs. compute on the synthetic benchmark (cf. paper Fig. 1)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _reconstruction(model, cfg: Config, data: Path, out: Path) -> Path:
    from .data import read_list
    from .visualize import reconstruct, reconstruction_figure

    item = cfg.eval_dataset(read_list(data / "val.csv", data)[:1], 1, 1)[0]
    mask = cfg.test_masking()(1, model.grid, train=False)
    clips = reconstruct(model, item["video"][None], mask)
    return reconstruction_figure(*clips, out / "reconstruction.png",
                                 out / "reconstruction.mp4")[0]
