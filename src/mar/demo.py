"""``mar demo``: the paper's story on a laptop, on the natural benchmark.

1. synthesize the benchmark (cached; ``kind="natural"``: camera and object motion over real
photographs, docs/natural_benchmark.md); 2. pretrain a tiny ViT on its unlabelled training
videos with VideoMAE's recipe (`mar pretrain`: tube masking 90 %, its xavier init) but
raw-pixel targets (``norm_target=True``: VideoMAE's per-patch normalised ones, which these
8 x 8 texture patches leave almost unpredictable, docs/results.md); 3. fine-tune that
encoder twice with the same budget: standard training (all tokens, linear head) and MAR
(cell running 50 %, bridging classifier, reconstruction branch); 4. evaluate both, MAR
also at other test ratios; 5. print a table (top-1, GFLOPs per view, clips/s, training
time) and save an accuracy-vs-GFLOPs plot (paper Fig. 1) and reconstruction pictures
(Fig. 6; the pretrained model's at tube 90 % too).

``pretrain_epochs=0`` fine-tunes from random weights; ``kind="shapes"`` runs on the first
benchmark (drawn shapes). :data:`FULL` is the longer run of ``mar demo --full``.
"""

from __future__ import annotations

import json
import statistics
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
    kind: str = "natural"
    model: str = "vit_nano"
    size: int = 64
    num_frames: int = 8
    patch_size: int = 8  # 8 x 8 tokens per frame at 64^2
    per_class_train: int = 40
    per_class_val: int = 12
    pretrain_epochs: int = 40
    norm_target: bool = False  # the pretraining's target; True: VideoMAE's normalised pixels
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    amp: str = "none"


# `mar demo --full`: the budget of one seed of the study's Fig. 1 (docs/results.md)
FULL = {"pretrain_epochs": 100, "epochs": 30}


def run_config(demo: DemoConfig, data: Path, mar: bool, init: str | None = None) -> Config:
    """The fine-tuning config of one arm of the comparison (``init``: a pretrained run's
    checkpoint to start from)."""
    from .config import build_config
    from .data import read_class_names

    common = {
        "model.name": demo.model,
        "model.num_classes": len(read_class_names(data / "classes.txt")),
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
        "train.eval_every": demo.epochs, "train.device": demo.device, "train.amp": demo.amp,
        "train.init": init,
        "eval.batch_size": 32,
    }
    arm = ({"model.head": "bridging", "masking.name": "cell_running", "masking.ratio": 0.5,
            "train.rec_weight": 0.1} if mar else
           {"model.head": "linear", "masking.name": "none", "masking.ratio": 0.0,
            "train.rec_weight": 0.0})
    return build_config({}, {**common, **arm}, where="mar demo")


def pretrain_config(demo: DemoConfig, data: Path, **overrides) -> Config:
    """`mar pretrain` on the training videos (their labels unused): the fine-tuning
    setting with VideoMAE's tube masking at 90 %, its pretraining init (xavier),
    reconstruction only of ``demo.norm_target`` targets, for ``demo.pretrain_epochs``
    epochs; ``overrides`` (dotted keys) last."""
    from .config import build_config, config_tree

    tree = config_tree(run_config(demo, data, mar=True))
    return build_config(tree, {"train.task": "pretrain", "model.init": "xavier",
                               "model.norm_target": demo.norm_target,
                               "masking.name": "tube",
                               "masking.ratio": 0.9, "eval_masking": None,
                               "train.rec_weight": 1.0, "train.keep_last": 1,
                               "train.epochs": demo.pretrain_epochs,
                               "train.eval_every": demo.pretrain_epochs, **overrides},
                        where="mar demo pretraining")


def pretrain_summary(cfg: Config, run_dir: Path) -> dict:
    """What a finished pretraining run learned: its newest checkpoint, the reconstruction
    loss over its last 20 % of steps (mean of the logged batch losses) and the trivial
    predictor's on the same kind of clips (:func:`trivial_loss`)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    losses = [(r["step"], r["loss"]) for r in rows if "clips_per_s" in r]
    final = [v for step, v in losses if step > 0.8 * losses[-1][0]]
    return {"dir": str(sorted(run_dir.glob("checkpoint-*"))[-1]),
            "loss_last20": statistics.mean(final), "trivial_loss": trivial_loss(cfg)}


def trivial_loss(cfg: Config, clips: int = 64) -> float:
    """The reconstruction loss of the best predictor that sees no visible patch, over the
    patches of ``clips`` training clips. Per-patch normalized targets (the default) have
    mean 0, so that predictor says 0 and its loss is their mean square: (n-1)/n for n
    pixels per patch and channel (the unbiased std), a little less where patches are flat.
    Raw pixel targets are best guessed by their mean over the set; the loss is their
    variance."""
    import torch

    from .data.transforms import finish
    from .models import reconstruction_target

    m = cfg.model
    loader = torch.utils.data.DataLoader(cfg.dataset("train"), batch_size=8)
    targets = []
    for batch in loader:
        video = finish(batch["video"], batch["erase"], m.pixel_mean, m.pixel_std)
        targets.append(reconstruction_target(video, m.patch_size, m.tubelet_size,
                                             m.pixel_mean, m.pixel_std, m.norm_target))
        if 8 * len(targets) >= clips:
            break
    t = torch.cat(targets).flatten(0, 1)
    return ((t - (0 if m.norm_target else t.mean(0))) ** 2).mean().item()


def clips_per_second(model, masking, grid_batch: int = 16, repeats: int = 3) -> float:
    """Inference throughput on random clips (median of ``repeats`` timed batches)."""
    import torch

    from .inference.score import score

    pe = model.encoder.patch_embed
    t, h, w = model.grid
    video = torch.randn(grid_batch, 3, t * pe.tubelet_size, h * pe.patch_size,
                        w * pe.patch_size)
    times = []
    score(model, video, masking, views_per_call=grid_batch)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        score(model, video, masking, views_per_call=grid_batch)
        times.append(time.perf_counter() - start)
    return grid_batch / sorted(times)[len(times) // 2]


def run_demo(demo: DemoConfig = DemoConfig()) -> dict:
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from .data.synth import SynthConfig, class_names, synthesize
    from .engine.evaluate import run_eval
    from .engine.trainer import train
    from .flops import formula_flops
    from .inference.load import load_model
    from .masking import make_masking
    from .runtime.distributed import init_distributed

    console = Console()
    start = time.perf_counter()
    out = Path(demo.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(demo.data) if demo.data else out / "data"
    synth = SynthConfig(num_frames=demo.num_frames, size=demo.size,
                        per_class_train=demo.per_class_train,
                        per_class_val=demo.per_class_val, seed=demo.seed, kind=demo.kind)
    classes = len(class_names(demo.kind))
    with tqdm(total=classes * (synth.per_class_train + synth.per_class_val),
              desc="synthesizing videos", dynamic_ncols=True) as bar:
        made = synthesize(data, synth, progress=bar.update)
    console.print(f"dataset: {data} ({demo.kind}, {classes} classes, "
                  f"{classes * synth.per_class_train} train / "
                  f"{classes * synth.per_class_val} val videos"
                  f"{', cached' if made['cached'] else ''})")
    info = init_distributed(demo.device)
    pre, init = None, None
    if demo.pretrain_epochs:
        target = "normalised" if demo.norm_target else "raw"
        console.rule(f"pretraining (mar pretrain): tube masking 90 %, reconstruction of "
                     f"{target} pixels only, labels unused")
        cfg = pretrain_config(demo, data)
        summary = train(cfg, out / "pretrain", overwrite=True)
        pre = {**pretrain_summary(cfg, out / "pretrain"), "train_s": summary["wall_time_s"]}
        init = pre["dir"]
        console.print(f"reconstruction loss over the last 20 % of steps "
                      f"{pre['loss_last20']:.4f}; a guess that sees no patch ("
                      + ("zeros" if demo.norm_target else "the mean patch")
                      + f") gives {pre['trivial_loss']:.4f}")
    rows = {}
    for name, mar in (("standard", False), ("MAR", True)):
        cfg = run_config(demo, data, mar, init)
        what = ("cell running 50 %, bridging, reconstruction" if mar
                else "all tokens, linear head")
        console.rule(f"{name}: {what}, from "
                     + ("the pretrained encoder" if init else "random weights"))
        summary = train(cfg, out / name, overwrite=True)
        model, cfg = load_model(out / name / _last(out / name), device=info.device)
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
    start_from = (f"from one pretrained encoder ({demo.pretrain_epochs} pretraining epochs)"
                  if init else "from random weights")
    table = Table(title=f"mar demo: standard training vs MAR, {start_from}, same budget "
                  f"({demo.epochs} epochs, {demo.model}, {demo.num_frames}x{demo.size}^2, "
                  f"patch {demo.patch_size}, {demo.kind} benchmark)")
    for col in ("", "top-1 %", "GFLOPs/view", "clips/s (inference)", "train time s",
                "params M"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, f"{r['top1']:.1f}", f"{r['gflops']:.3f}", f"{r['clips_s']:.0f}",
                      f"{r['train_s']:.0f}", f"{r['params_m']:.2f}")
    console.print(table)
    console.print(f"chance is {100 / classes:.1f} %. MAR tested at other ratios: " +
                  ", ".join(f"{int(100 * r)}% -> {a:.1f} %" for r, _, a in rows["MAR"]["ratios"]))
    pictures = [_plot(rows, out / "accuracy_vs_gflops.png", demo.kind),
                _reconstruction(mar_model, mar_cfg, data, out / "reconstruction")]
    if pre:
        model, cfg = load_model(pre["dir"], device=info.device)
        pictures.append(_reconstruction(model, cfg, data, out / "pretrain_reconstruction",
                                        make_masking("tube", 0.9)))
        rows["pretraining"] = pre
    (out / "demo.json").write_text(json.dumps(rows, indent=1))
    console.print(f"wrote {', '.join(str(p) for p in pictures)} and {out / 'demo.json'} "
                  f"({time.perf_counter() - start:.0f} s in all)")
    return rows


def _last(run: Path) -> str:
    return "best" if (run / "best").is_dir() else sorted(run.glob("checkpoint-*"))[-1].name


def _plot(rows: dict, path: Path, kind: str) -> Path:
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
    ax.set_title(f"Accuracy vs. compute on the {kind} benchmark (cf. paper Fig. 1)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _reconstruction(model, cfg: Config, data: Path, stem: Path, masking=None) -> Path:
    """Original, masked and reconstructed frames of the first validation clip (PNG and
    MP4 at ``stem``), under ``masking`` (default: the model's test-time masking)."""
    from .data import read_list
    from .inference.visualize import reconstruct, reconstruction_figure

    item = cfg.views_dataset(read_list(data / "val.csv", data)[:1], 1, 1)[0]
    device = next(model.parameters()).device
    mask = (masking or cfg.test_masking())(1, model.grid, train=False).to(device)
    clips = reconstruct(model, item["video"][:1].to(device), mask)
    return reconstruction_figure(*clips, stem.with_suffix(".png"), stem.with_suffix(".mp4"))[0]
