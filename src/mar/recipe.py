"""``mar recipe``: what a config trains with on N processes, held against the paper's Table I.

The effective batch, the learning rate, the steps and lambda are the trainer's, computed by
the functions the trainer calls (:func:`mar.engine.budget.plan`): the effective batch is
``train.batch_size x train.accum_steps x processes x data.repeats`` clips per optimizer
step, and the LR is ``train.base_lr x effective batch / 256`` when ``train.lr_scaling`` is
on, else ``train.base_lr`` as is. Nothing is trained or allocated: the config is loaded
(with ``load_config``'s shape check on the meta device) and the numbers are read off it.

Table I's "Batch Size" is read as clips per step, repeated samples included, which is what
the trainer counts: Table I gives one batch (512 for ViT-B, 128 for ViT-L) for SSv2 (1
sample per video) and K400 (2), and one base LR, and the official code's batch for K400
ViT-B is 8 videos x 2 clips per GPU, the same 16 clips as its SSv2 batch. (VideoMAE's rule
counts videos; read that way, K400 ViT-B would train 1024 clips per step.) Table I's weight
decay "0.5" is read as 0.05, the value of the official MAR code and of VideoMAE.

The dataset of a config (for its Table I column) is found, in this order, in
``data.train_list``, ``data.root``, the config's file name, then ``model.num_classes``
(174 SSv2, 400 K400, 101 UCF101, 51 HMDB51); ``--dataset`` sets it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.budget import REFERENCE_BATCH, plan, videos_per_process

if TYPE_CHECKING:
    from .config import Config

DATASET_NAMES = {"ssv2": "SSv2", "k400": "K400", "ucf101": "UCF101", "hmdb51": "HMDB51"}
# words that name a dataset in a path (lower case)
DATASET_WORDS = {
    "ssv2": ("ssv2", "something", "sthv2", "sth-sth"),
    "k400": ("k400", "kinetics400", "kinetics-400", "kinetics_400"),
    "ucf101": ("ucf101",),
    "hmdb51": ("hmdb51", "hmdb"),
}
DATASET_CLASSES = {174: "ssv2", 400: "k400", 101: "ucf101", 51: "hmdb51"}
SIZES = {"vit_base": "B", "vit_large": "L"}

# training videos, for steps per epoch when --train-size is not given: SSv2's official
# train split, K400 as the paper rounds it (copies differ: pass --train-size), split 1 of
# UCF101 and HMDB51 (the paper: 9.5k and 3.5k)
TRAIN_SIZES = {"ssv2": 168_913, "k400": 240_000, "ucf101": 9_537, "hmdb51": 3_570}
TRAIN_SIZE_NOTES = {"ssv2": "SSv2 train split", "k400": "the paper's 'around 240k'",
                    "ucf101": "UCF101 split 1", "hmdb51": "HMDB51 split 1"}

# Table I, one dict per (dataset, size): config keys (dotted) and the two derived figures,
# "effective_batch" (clips per optimizer step) and "lr" (the actual LR, by the rule
# actual LR = base LR x batch / 256 of Table I's footnote).
_TABLE_I_COMMON = {
    "train.base_lr": 1e-3,
    "train.lr_scaling": True,           # the footnote's linear scaling rule
    "train.weight_decay": 0.05,         # Table I prints 0.5: a typo (official code, VideoMAE)
    "train.betas": (0.9, 0.999),
    "train.layer_decay": 0.75,
    "train.warmup_epochs": 5,
    "model.head_dropout": 0.1,
    "data.flip_prob": 0.5,              # "Flip Augmentation: yes"
    "data.rand_augment": "rand-m9-mstd0.5-inc1",  # RandAugment (9, 0.5)
    "data.mixup": 0.8,
    "data.cutmix": 1.0,
    "data.label_smoothing": 0.1,
}
TABLE_I: dict[tuple[str, str], dict[str, Any]] = {
    ("ssv2", "B"): {"effective_batch": 512, "lr": 2e-3, **_TABLE_I_COMMON,
                    "train.epochs": 40, "model.drop_path": 0.1, "data.repeats": 1},
    ("ssv2", "L"): {"effective_batch": 128, "lr": 5e-4, **_TABLE_I_COMMON,
                    "train.epochs": 40, "model.drop_path": 0.2, "data.repeats": 1},
    ("k400", "B"): {"effective_batch": 512, "lr": 2e-3, **_TABLE_I_COMMON,
                    "train.epochs": 100, "model.drop_path": 0.1, "data.repeats": 2},
    ("k400", "L"): {"effective_batch": 128, "lr": 5e-4, **_TABLE_I_COMMON,
                    "train.epochs": 60, "model.drop_path": 0.2, "data.repeats": 2},
}
_DERIVED = {"effective_batch": "effective batch", "lr": "actual LR"}


def fmt(value: Any) -> str:
    """A value as the report writes it: LRs as 2e-3, other floats as %g."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(list(value) if isinstance(value, tuple) else value)
    if value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


@dataclass
class Departure:
    """A value that differs from Table I."""

    key: str
    value: Any
    table_i: Any

    def __str__(self) -> str:
        name = _DERIVED.get(self.key, self.key)
        return f"{name} {fmt(self.value)} (Table I: {fmt(self.table_i)})"


@dataclass
class Recipe:
    """The optimisation of one config on ``processes`` processes."""

    config: str | None
    task: str
    processes: int
    processes_from: str            # "--processes", "train.num_gpus" or "default"
    num_gpus: int | None
    batch_size: int                # videos per process per micro-batch
    repeats: int
    accum_steps: int
    effective_batch: int           # clips per optimizer step
    base_lr: float
    lr_scaling: bool
    lr: float                      # the actual (peak) LR
    min_lr: float
    warmup_start_lr: float
    warmup_epochs: float
    epochs: int
    weight_decay: float
    layer_decay: float
    layer_decay_policy: str
    drop_path: float
    dropout: float
    rec_weight: float
    test_clips: int
    test_crops: int
    merge: str
    dataset: str | None
    dataset_from: str | None
    size: str | None
    train_size: int | None = None
    train_size_from: str | None = None
    steps_per_epoch: int | None = None
    warmup_steps: int | None = None
    total_steps: int | None = None
    table_i: str | None = None     # "K400, ViT-B" when a Table I column applies
    no_table_i: str | None = None  # why none does
    departures: list[Departure] = field(default_factory=list)

    @property
    def clips_per_process(self) -> int:
        return self.batch_size * self.repeats

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["departures_text"] = [str(d) for d in self.departures]
        return out


def detect_dataset(cfg: Config, path: str | Path | None = None) -> tuple[str | None, str | None]:
    """``(dataset, where it was read)``: the first of ``data.train_list``, ``data.root``,
    the file name that names a known dataset, else ``model.num_classes``; (None, None)."""
    places = [("data.train_list", cfg.data.train_list), ("data.root", cfg.data.root),
              ("file name", Path(path).name if path is not None else None)]
    for where, text in places:
        if text:
            text = str(text).lower()
            for name, words in DATASET_WORDS.items():
                if any(word in text for word in words):
                    return name, where
    name = DATASET_CLASSES.get(cfg.model.num_classes)
    return (name, "model.num_classes") if name else (None, None)


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to rounding (2e-3 computed vs. written), sequences item by item."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = [isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)]
    if all(numbers):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def recipe(cfg: Config, processes: int | None = None, *, train_size: int | None = None,
           path: str | Path | None = None, dataset: str | None = None) -> Recipe:
    """The recipe of ``cfg`` on ``processes`` processes (default: ``train.num_gpus``, else
    1), with steps when the number of training videos is given or known, and every value
    that departs from Table I when the config is a Table I run (SSv2/K400, ViT-B/L,
    fine-tuning). ``path``: the config file (its name can tell the dataset)."""
    tc, dc = cfg.train, cfg.data
    if processes is not None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        processes_from = "--processes"
    elif tc.num_gpus is not None:
        processes, processes_from = tc.num_gpus, "train.num_gpus"
    else:
        processes, processes_from = 1, "default"

    if dataset is not None:
        if dataset not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_NAMES)}")
        dataset_from = "--dataset"
    else:
        dataset, dataset_from = detect_dataset(cfg, path)
    size = SIZES.get(cfg.model.name)
    if train_size is not None:
        if train_size < 1:
            raise ValueError(f"train size must be >= 1, got {train_size}")
        train_size_from = "--train-size"
    elif dataset in TRAIN_SIZES:
        train_size, train_size_from = TRAIN_SIZES[dataset], TRAIN_SIZE_NOTES[dataset]
    else:
        train_size_from = None
    # the trainer's numbers, by the trainer's functions: its sampler's share of the
    # training videos per process, then full micro-batches and accumulation groups
    b = plan(cfg, processes, None if train_size is None
             else videos_per_process(train_size, processes, tc.batch_size))
    r = Recipe(
        config=str(path) if path is not None else None, task=tc.task, processes=processes,
        processes_from=processes_from, num_gpus=tc.num_gpus, batch_size=tc.batch_size,
        repeats=dc.repeats, accum_steps=tc.accum_steps, effective_batch=b.effective_batch,
        base_lr=tc.base_lr, lr_scaling=tc.lr_scaling, lr=b.lr, min_lr=tc.min_lr,
        warmup_start_lr=tc.warmup_start_lr, warmup_epochs=tc.warmup_epochs, epochs=tc.epochs,
        weight_decay=tc.weight_decay, layer_decay=tc.layer_decay,
        layer_decay_policy=tc.layer_decay_policy, drop_path=cfg.model.drop_path,
        dropout=cfg.model.head_dropout,
        rec_weight=b.rec_weight, test_clips=dc.test_clips, test_crops=dc.test_crops,
        merge=cfg.eval.merge, dataset=dataset, dataset_from=dataset_from, size=size,
        train_size=train_size, train_size_from=train_size_from,
        steps_per_epoch=b.steps_per_epoch, total_steps=b.total_steps,
        warmup_steps=b.warmup_steps)

    row = TABLE_I.get((dataset, size))
    if tc.task != "finetune":
        r.no_table_i = "Table I is the fine-tuning recipe; this config pretrains"
    elif dataset is None:
        r.no_table_i = "dataset not recognised (use --dataset)"
    elif dataset not in ("ssv2", "k400"):
        r.no_table_i = f"Table I has no {DATASET_NAMES[dataset]} column"
    elif row is None:
        r.no_table_i = f"Table I covers ViT-B and ViT-L, not {cfg.model.name}"
    else:
        r.table_i = f"{DATASET_NAMES[dataset]}, ViT-{size}"
        derived = {"effective_batch": b.effective_batch, "lr": b.lr}
        for key, expected in row.items():
            value = derived[key] if key in derived else _get(cfg, key)
            if not _same(value, expected):
                r.departures.append(Departure(key, value, expected))
    return r


def format_recipe(r: Recipe) -> str:
    """The recipe as a few lines of text."""
    what = f"{DATASET_NAMES[r.dataset]} (from {r.dataset_from})" if r.dataset else "dataset ?"
    procs = f"{r.processes} ({r.processes_from})"
    if r.num_gpus is not None and r.processes != r.num_gpus:
        procs += f"; the recipe is written for {r.num_gpus} (train.num_gpus)"
    per = (f"{r.batch_size} videos x {r.repeats} repeats = {r.clips_per_process} clips"
           if r.repeats > 1 else f"{r.batch_size} clips")
    lr = (f"{fmt(r.lr)} = base {fmt(r.base_lr)} x {r.effective_batch} / {REFERENCE_BATCH} "
          "(scaled)"
          if r.lr_scaling else f"{fmt(r.lr)} = base {fmt(r.base_lr)}, not scaled "
          "(train.lr_scaling: false)")
    lines = [
        f"{r.config or 'config'}: {r.task}, {what}, model ViT-{r.size or '?'}",
        f"  processes        {procs}",
        f"  per process      {per}, accumulation {r.accum_steps}",
        f"  effective batch  {r.effective_batch} clips = {r.batch_size} x {r.repeats} repeats "
        f"x {r.accum_steps} accumulation x {r.processes} processes",
        f"  LR               {lr}",
        f"  schedule         {r.epochs} epochs, {fmt(r.warmup_epochs)} warm-up (from "
        f"{fmt(r.warmup_start_lr)}), cosine to {fmt(r.min_lr)}",
    ]
    if r.train_size is not None:
        lines.append(f"  steps            {r.steps_per_epoch} per epoch, {r.total_steps} in all, "
                     f"{r.warmup_steps} warm-up ({r.train_size} videos: {r.train_size_from})")
    lines.append(f"  regularisation   weight decay {fmt(r.weight_decay)}, layer decay "
                 f"{fmt(r.layer_decay)} ({r.layer_decay_policy}), drop path {fmt(r.drop_path)}, "
                 f"dropout {fmt(r.dropout)}, lambda {fmt(r.rec_weight)}")
    lines.append(f"  test views       {r.test_clips} x {r.test_crops} ({r.merge})")
    if r.table_i is None:
        lines.append(f"  Table I          not compared: {r.no_table_i}")
    elif not r.departures:
        lines.append(f"  Table I          ({r.table_i}): no departures")
    else:
        lines.append(f"  Table I          ({r.table_i}): {len(r.departures)} departures")
        lines += [f"    {d}" for d in r.departures]
    return "\n".join(lines)


def markdown_table(recipes: list[Recipe]) -> str:
    """One row per recipe, then each recipe's departures from Table I."""
    head = ("| config | GPUs | per-GPU batch | accum. | repeats | effective batch | base LR | "
            "actual LR | epochs | warm-up | layer decay | drop path | dropout | λ | "
            "test views | Table I |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in recipes:
        per = f"{r.batch_size}" + (f" ({r.clips_per_process} clips)" if r.repeats > 1 else "")
        lr = f"{fmt(r.lr)}" + ("" if r.lr_scaling else " (not scaled)")
        policy = "" if r.layer_decay_policy == "paper" else f" ({r.layer_decay_policy})"
        table = (("follows " if not r.departures else f"{len(r.departures)} departures, ")
                 + r.table_i if r.table_i else "n/a")
        lines.append(
            f"| `{r.config}` | {r.processes} | {per} | {r.accum_steps} | {r.repeats} | "
            f"{r.effective_batch} | {fmt(r.base_lr)} | {lr} | {r.epochs} | "
            f"{fmt(r.warmup_epochs)} | {fmt(r.layer_decay)}{policy} | {fmt(r.drop_path)} | "
            f"{fmt(r.dropout)} | {fmt(r.rec_weight)} | {r.test_clips} x {r.test_crops} "
            f"({r.merge}) | {table} |")
    lines.append("")
    for r in recipes:
        if r.departures:
            lines.append(f"- `{r.config}` departs from Table I ({r.table_i}): "
                         + "; ".join(str(d) for d in r.departures) + ".")
        elif r.table_i is None:
            lines.append(f"- `{r.config}`: {r.no_table_i}.")
    return "\n".join(lines)


def table_i_markdown() -> str:
    """Table I itself, as :data:`TABLE_I` holds it."""
    keys = list(next(iter(TABLE_I.values())))
    cols = [f"{DATASET_NAMES[d]} ViT-{s}" for d, s in TABLE_I]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for key in keys:
        lines.append(f"| {_DERIVED.get(key, key)} | "
                     + " | ".join(fmt(row[key]) for row in TABLE_I.values()) + " |")
    return "\n".join(lines)
