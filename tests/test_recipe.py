"""The shipped configs against the paper's Table I and the official code (reference §1.7),
and ``mar recipe``. Configs are loaded, never trained; no model is built beyond the
shape check of ``load_config``."""

from __future__ import annotations

import argparse
import json
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import as_args, shrink

import mar.engine.trainer as trainer
from mar.cli.recipe import add_parser
from mar.config import load_config
from mar.engine.budget import scaled_lr
from mar.recipe import TABLE_I, Departure, detect_dataset, fmt, recipe
from mar.runtime.distributed import ShardSampler

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# every paper config: (dataset, size); Table I in the tests' own words, so a wrong
# mar.recipe.TABLE_I cannot hide a wrong config
PAPER = {
    "ssv2_vit_base_mar50.yaml": ("ssv2", "B"),
    "ssv2_vit_base_mar75.yaml": ("ssv2", "B"),
    "ssv2_vit_base_standard.yaml": ("ssv2", "B"),
    "ssv2_vit_large_mar50.yaml": ("ssv2", "L"),
    "ssv2_vit_large_mar75.yaml": ("ssv2", "L"),
    "k400_vit_base_mar50.yaml": ("k400", "B"),
    "k400_vit_base_mar75.yaml": ("k400", "B"),
    "k400_vit_base_standard.yaml": ("k400", "B"),
    "k400_vit_large_mar50.yaml": ("k400", "L"),
    "k400_vit_large_mar75.yaml": ("k400", "L"),
}
BATCH = {"B": 512, "L": 128}
LR = {"B": 2e-3, "L": 5e-4}            # 1e-3 x 512 / 256 and 1e-3 x 128 / 256
DROP_PATH = {"B": 0.1, "L": 0.2}
EPOCHS = {("ssv2", "B"): 40, ("ssv2", "L"): 40, ("k400", "B"): 100, ("k400", "L"): 60}
REPEATS = {"ssv2": 1, "k400": 2}
MAX_CLIPS_PER_GPU = {"B": 32, "L": 8}  # what an 80 GB GPU holds in bf16 (docs/recipes.md)

# the official code's values (reference §1.7, §1.8), one per official config
OFFICIAL = {
    "ssv2_vit_base_mar50_official.yaml": dict(
        dataset="ssv2", size="B", base_lr=1e-3, batch=16, repeats=1, epochs=40,
        layer_decay=0.75, drop_path=0.1, dropout=0.1, rec_weight=0.1, views=(2, 3)),
    "k400_vit_base_mar50_official.yaml": dict(
        dataset="k400", size="B", base_lr=1e-3, batch=8, repeats=2, epochs=100,
        layer_decay=0.65, drop_path=0.1, dropout=0.0, rec_weight=0.01, views=(7, 3)),
    "ssv2_vit_large_mar50_official.yaml": dict(
        dataset="ssv2", size="L", base_lr=2.5e-4, batch=2, repeats=1, epochs=40,
        layer_decay=0.75, drop_path=0.2, dropout=0.1, rec_weight=0.1, views=(2, 3)),
    "k400_vit_large_mar50_official.yaml": dict(
        dataset="k400", size="L", base_lr=5e-4, batch=4, repeats=2, epochs=60,
        layer_decay=0.75, drop_path=0.2, dropout=0.1, rec_weight=0.01, views=(7, 3)),
}
OFFICIAL_DIR = CONFIGS / "official"


@cache
def _load(path: Path):
    return load_config(path)


def test_every_paper_config_is_checked():
    shipped = {p.name for p in CONFIGS.glob("*.yaml")
               if p.name.startswith(("ssv2_", "k400_"))}
    assert shipped == set(PAPER)
    assert {p.name for p in OFFICIAL_DIR.glob("*.yaml")} == set(OFFICIAL)


def test_table_i_data_is_table_i():
    assert set(TABLE_I) == {(d, s) for d in ("ssv2", "k400") for s in ("B", "L")}
    for (dataset, size), row in TABLE_I.items():
        assert row["effective_batch"] == BATCH[size]
        assert row["lr"] == pytest.approx(LR[size])
        assert row["lr"] == pytest.approx(scaled_lr(row["train.base_lr"], BATCH[size]))
        assert row["train.base_lr"] == 1e-3 and row["train.lr_scaling"] is True
        assert row["train.epochs"] == EPOCHS[dataset, size]
        assert row["model.drop_path"] == DROP_PATH[size]
        assert row["data.repeats"] == REPEATS[dataset]
        assert row["train.weight_decay"] == 0.05       # Table I's "0.5" is a typo
        assert row["train.warmup_epochs"] == 5 and row["train.layer_decay"] == 0.75
        assert row["model.head_dropout"] == 0.1
        assert (row["data.mixup"], row["data.cutmix"], row["data.label_smoothing"]) == (
            0.8, 1.0, 0.1)
        assert row["data.rand_augment"] == "rand-m9-mstd0.5-inc1"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_reproduces_table_i(name):
    dataset, size = PAPER[name]
    cfg = _load(CONFIGS / name)
    tc, dc, mc = cfg.train, cfg.data, cfg.model
    assert tc.num_gpus is not None
    effective = tc.batch_size * tc.accum_steps * tc.num_gpus * dc.repeats
    assert effective == BATCH[size]
    assert tc.lr_scaling and tc.base_lr == 1e-3
    assert scaled_lr(tc.base_lr, effective) == pytest.approx(LR[size])
    assert tc.epochs == EPOCHS[dataset, size] and tc.warmup_epochs == 5
    assert dc.repeats == REPEATS[dataset]
    assert mc.drop_path == DROP_PATH[size] and mc.head_dropout == 0.1
    assert tc.layer_decay == 0.75 and tc.layer_decay_policy == "paper"
    assert tc.weight_decay == 0.05 and tc.betas == (0.9, 0.999)
    assert (dc.mixup, dc.cutmix, dc.label_smoothing) == (0.8, 1.0, 0.1)
    assert dc.rand_augment == "rand-m9-mstd0.5-inc1" and dc.flip_prob == 0.5
    assert tc.batch_size * dc.repeats <= MAX_CLIPS_PER_GPU[size]
    assert tc.rec_weight == (0.0 if "standard" in name else 0.1 if dataset == "ssv2" else 0.01)

    r = recipe(cfg, path=CONFIGS / name)
    assert (r.dataset, r.size, r.processes, r.processes_from) == (
        dataset, size, tc.num_gpus, "train.num_gpus")
    assert r.effective_batch == BATCH[size] and r.lr == pytest.approx(LR[size])
    assert r.table_i is not None and r.departures == []


@pytest.mark.parametrize("name", ["ucf101_vit_base_mar50.yaml", "hmdb51_vit_base_mar50.yaml"])
def test_small_dataset_configs_follow_videomae_ucf101_script(name):
    # 8 GPUs x 16 videos x 2 samples; VideoMAE's LR 5e-4 x 128 videos / 256 = 2.5e-4
    cfg = _load(CONFIGS / name)
    r = recipe(cfg, path=CONFIGS / name)
    assert (r.processes, r.batch_size, r.repeats, r.accum_steps) == (8, 16, 2, 1)
    assert r.lr == pytest.approx(5e-4 * 128 / 256)
    assert cfg.train.min_lr == pytest.approx(1e-5 * 128 / 256)
    assert (r.layer_decay, r.drop_path, r.epochs, r.test_clips, r.test_crops) == (
        0.7, 0.2, 100, 5, 3)
    assert r.table_i is None and "no" in r.no_table_i and r.departures == []


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_config_reproduces_the_official_code(name):
    o = OFFICIAL[name]
    assert "official" in name
    cfg = _load(OFFICIAL_DIR / name)
    tc, dc, mc = cfg.train, cfg.data, cfg.model
    assert tc.num_gpus == 8 and tc.accum_steps == 1
    assert (tc.batch_size, dc.repeats) == (o["batch"], o["repeats"])
    assert tc.base_lr == o["base_lr"] and tc.lr_scaling is False
    assert tc.epochs == o["epochs"] and tc.warmup_epochs == 5
    assert tc.warmup_start_lr == 1e-6 and tc.min_lr == 1e-6
    assert tc.layer_decay == o["layer_decay"] and tc.layer_decay_policy == "official"
    assert mc.drop_path == o["drop_path"] and mc.head_dropout == o["dropout"]
    assert mc.name == {"B": "vit_base", "L": "vit_large"}[o["size"]] and mc.head == "bridging"
    assert tc.rec_weight == o["rec_weight"] and tc.weight_decay == 0.05
    assert (dc.test_clips, dc.test_crops) == o["views"] and cfg.eval.merge == "sum"
    assert cfg.masking.name == "cell_running" and cfg.masking.ratio == 0.5
    if o["dataset"] == "ssv2":
        assert dc.sampling == "segment" and dc.segment_test_style == "mar"
        assert [tuple(p) for p in dc.flip_pairs] == [(86, 87), (93, 94), (166, 167)]
    else:
        assert (dc.sampling, dc.stride) == ("dense", 4)

    r = recipe(cfg, path=OFFICIAL_DIR / name)
    assert r.lr == o["base_lr"]                        # not scaled
    assert r.effective_batch == 8 * o["batch"] * o["repeats"]
    assert (r.dataset, r.size) == (o["dataset"], o["size"])
    keys = {d.key for d in r.departures}
    assert {"effective_batch", "train.lr_scaling"} <= keys
    if name.startswith("k400_vit_base"):
        assert Departure("train.layer_decay", 0.65, 0.75) in r.departures
        assert Departure("model.head_dropout", 0.0, 0.1) in r.departures


def test_recipe_counts_batch_accumulation_processes_and_repeats():
    # 3 videos x 5 accumulation x 7 processes x 2 repeats: leaving out any factor (or
    # counting videos, not clips) gives another number
    cfg = load_config(CONFIGS / "ssv2_vit_base_mar50.yaml",
                      ["train.batch_size=3", "train.accum_steps=5", "data.repeats=2"])
    r = recipe(cfg, 7)
    assert r.effective_batch == 210
    assert r.lr == pytest.approx(8.203125e-4, rel=1e-12)    # 1e-3 x 210 / 256
    assert recipe(cfg, 14).effective_batch == 420 and recipe(cfg, 1).effective_batch == 30


def test_recipe_lr_scaling_off_keeps_the_base_lr():
    official = _load(OFFICIAL_DIR / "ssv2_vit_large_mar50_official.yaml")
    assert official.train.lr_scaling is False
    for processes in (1, 8, 64):
        r = recipe(official, processes)
        assert r.lr == 2.5e-4 and r.effective_batch == 2 * processes
    scaled = load_config(OFFICIAL_DIR / "ssv2_vit_large_mar50_official.yaml",
                         ["train.lr_scaling=true"])
    assert recipe(scaled, 64).lr == pytest.approx(2.5e-4 * 128 / 256)


def test_recipe_lambda_is_the_reconstruction_weight_the_loss_gets():
    assert recipe(_load(CONFIGS / "k400_vit_base_mar50.yaml")).rec_weight == 0.01
    assert recipe(_load(CONFIGS / "ssv2_vit_base_mar50.yaml")).rec_weight == 0.1
    assert recipe(_load(CONFIGS / "ssv2_vit_base_standard.yaml")).rec_weight == 0.0
    pretrain = _load(CONFIGS / "pretrain_vit_base.yaml")
    assert pretrain.train.rec_weight != 1.0                # not read when pretraining
    assert recipe(pretrain).rec_weight == 1.0              # reconstruction is the loss


def test_recipe_effective_batch_of_every_shipped_config():
    for path in [*CONFIGS.glob("*.yaml"), *OFFICIAL_DIR.glob("*.yaml")]:
        cfg = _load(path)
        tc = cfg.train
        for processes in (1, 8, 12):
            r = recipe(cfg, processes)
            assert r.effective_batch == tc.batch_size * tc.accum_steps * processes * (
                cfg.data.repeats), path.name
            assert r.effective_batch == trainer.effective_batch(cfg, processes)
            assert r.lr == pytest.approx(tc.base_lr * r.effective_batch / 256
                                         if tc.lr_scaling else tc.base_lr, rel=1e-12)


class _Planned(Exception):
    """Raised at the trainer's first LR look-up: by then it has planned the whole run."""


def _what_the_trainer_runs(cfg, out: Path, monkeypatch, capsys) -> dict:
    """Run :func:`mar.engine.trainer.train` up to its first optimizer update and return
    what it trains with: the effective batch it prints, the peak LR, total and warm-up
    steps it gives the schedule, and the lambda it gives the loss."""
    seen = {}

    class Step(trainer.TrainStep):
        def __init__(self, *args, rec_weight, **kwargs):
            seen["rec_weight"] = rec_weight
            super().__init__(*args, rec_weight=rec_weight, **kwargs)

    def lr_at(step, *, total_steps, warmup_steps, base_lr, **_):
        seen.update(lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps)
        raise _Planned

    monkeypatch.setattr(trainer, "TrainStep", Step)
    monkeypatch.setattr(trainer, "lr_at", lr_at)
    capsys.readouterr()
    with pytest.raises(_Planned):
        trainer.train(cfg, out)
    printed = re.search(r"^effective batch (\d+) \(", capsys.readouterr().out, re.M)
    assert printed, "the trainer no longer prints its effective batch"
    seen["effective_batch"] = int(printed.group(1))
    return seen


# (config, extra overrides, what the trainer runs on 1 process and the 24 tiny videos of
# batch 2, worked out by hand: effective batch, LR, steps per epoch, warm-up steps, lambda)
TRAINER_CASES = {
    # 2 videos x 5 accumulation x 2 repeats = 20 clips, LR 1e-3 x 20 / 256; 24 // 2 // 5
    # = 2 steps per epoch (the last 2 micro-batches make no full group); warm-up 5 x 2
    "k400 accumulation and repeats": ("k400_vit_base_mar50.yaml", {"train.accum_steps": 5},
                                      (20, 7.8125e-5, 2, 10, 0.01)),
    # not scaled: the base LR as is; 12 steps; warm-up round(0.25 x 12)
    "official, no scaling": ("official/ssv2_vit_large_mar50_official.yaml",
                             {"train.warmup_epochs": 0.25}, (2, 2.5e-4, 12, 3, 0.1)),
    # pretraining: lambda 1 whatever train.rec_weight says; 1.5e-4 x 2 / 256
    "pretrain": ("pretrain_vit_base.yaml", {"train.warmup_epochs": 1.5},
                 (2, 1.171875e-6, 12, 18, 1.0)),
}


@pytest.mark.parametrize("case", sorted(TRAINER_CASES))
def test_recipe_is_what_the_trainer_runs(case, tiny_lists, tmp_path, monkeypatch, capsys):
    name, extra, (effective, lr, per_epoch, warmup, lam) = TRAINER_CASES[case]
    epochs = 3
    overrides = shrink(CONFIGS / name, tiny_lists, **extra, **{"train.epochs": epochs})
    cfg = load_config(CONFIGS / name, as_args(overrides))
    videos = len(tiny_lists["train"].read_text().splitlines())
    assert videos == 24 and cfg.train.batch_size == 2

    ran = _what_the_trainer_runs(cfg, tmp_path / "run", monkeypatch, capsys)
    assert ran["effective_batch"] == effective
    assert ran["lr"] == pytest.approx(lr, rel=1e-12)
    assert (ran["total_steps"], ran["warmup_steps"]) == (epochs * per_epoch, warmup)
    assert ran["rec_weight"] == lam

    r = recipe(cfg, 1, train_size=videos)
    assert (r.effective_batch, r.steps_per_epoch, r.total_steps, r.warmup_steps) == (
        ran["effective_batch"], per_epoch, ran["total_steps"], ran["warmup_steps"])
    assert r.lr == ran["lr"] and r.rec_weight == ran["rec_weight"]


def test_other_process_counts_depart_from_table_i():
    cfg = _load(CONFIGS / "ssv2_vit_base_mar50.yaml")
    r = recipe(cfg, 4)
    assert (r.processes, r.processes_from, r.effective_batch) == (4, "--processes", 256)
    assert [str(d) for d in r.departures] == ["effective batch 256 (Table I: 512)",
                                              "actual LR 1e-3 (Table I: 2e-3)"]
    assert recipe(cfg, 8).departures == []
    with pytest.raises(ValueError, match="processes"):
        recipe(cfg, 0)


def test_override_departure_reads_like_the_table():
    cfg = load_config(CONFIGS / "k400_vit_base_mar50.yaml", ["train.layer_decay=0.65"])
    r = recipe(cfg, path="k400_vit_base_mar50.yaml")
    assert [str(d) for d in r.departures] == ["train.layer_decay 0.65 (Table I: 0.75)"]


# ssv2_vit_base_mar50: 16 videos x 4 accumulation per process, 40 epochs, 5 warm-up;
# steps by hand: the sampler trims to whole rounds of processes x 16 videos, then whole
# groups of 4 micro-batches
@pytest.mark.parametrize("processes,train_size,steps", [
    (8, 168_913, 329),     # 168913 // 128 = 1319 micro-batches per process, // 4
    (3, 1000, 5),          # 1000 // 48 = 20, // 4
    (2, 5000, 39),         # 5000 // 32 = 156, // 4
    (1, 37, 0), (8, 100, 0)])
def test_steps_match_the_trainers_sampler(processes, train_size, steps):
    cfg = _load(CONFIGS / "ssv2_vit_base_mar50.yaml")
    tc = cfg.train
    assert (tc.batch_size, tc.accum_steps, tc.epochs, tc.warmup_epochs) == (16, 4, 40, 5)
    r = recipe(cfg, processes, train_size=train_size)
    assert (r.steps_per_epoch, r.total_steps, r.warmup_steps) == (steps, 40 * steps, 5 * steps)
    # every rank of the training sampler the trainer builds holds that many full groups
    for rank in range(processes):
        sampler = ShardSampler(train_size, rank, processes, shuffle=True,
                               batch_size=tc.batch_size)
        assert len(sampler) // tc.batch_size // tc.accum_steps == steps
    assert r.train_size_from == "--train-size"


def test_known_train_size_and_none_when_unknown():
    r = recipe(_load(CONFIGS / "ssv2_vit_base_mar50.yaml"))
    assert (r.train_size, r.steps_per_epoch) == (168_913, 168_913 // 128 // 4)
    tiny = recipe(_load(CONFIGS / "tiny_cpu.yaml"))
    assert tiny.dataset is None and tiny.steps_per_epoch is None and tiny.table_i is None


def test_dataset_detection():
    cfg = _load(CONFIGS / "ssv2_vit_base_mar50.yaml")
    assert detect_dataset(cfg) == ("ssv2", "data.train_list")
    bare = load_config(CONFIGS / "ssv2_vit_base_mar50.yaml", ["data.train_list=null"])
    assert detect_dataset(bare, "runs/kinetics400_b.yaml") == ("k400", "file name")
    assert detect_dataset(bare, "mine.yaml") == ("ssv2", "model.num_classes")
    odd = load_config(None, ["model.num_classes=7"])
    assert detect_dataset(odd, "mine.yaml") == (None, None)
    r = recipe(odd, dataset="k400")
    assert r.dataset_from == "--dataset" and r.table_i is not None and r.departures
    with pytest.raises(ValueError, match="unknown dataset"):
        recipe(odd, dataset="imagenet")


def test_fmt():
    assert [fmt(x) for x in (2e-3, 5e-4, 2.5e-4, 1.6e-5, 0.75, 0.0, 512, True)] == [
        "2e-3", "5e-4", "2.5e-4", "1.6e-5", "0.75", "0", "512", "True"]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mar")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_prints_the_recipe(capsys):
    path = str(OFFICIAL_DIR / "k400_vit_base_mar50_official.yaml")
    assert _run(["recipe", path, "--processes", "8", "--train-size", "1280"]) == 0
    out = capsys.readouterr().out
    assert "128 clips = 8 x 2 repeats x 1 accumulation x 8 processes" in out
    assert "1e-3 = base 1e-3, not scaled" in out
    assert "20 per epoch, 2000 in all" in out            # 1280 videos / (8 x 8)
    assert "train.layer_decay 0.65 (Table I: 0.75)" in out
    assert "model.head_dropout 0 (Table I: 0.1)" in out

    assert _run(["recipe", str(CONFIGS / "k400_vit_large_mar50.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["effective_batch"], data["processes"], data["departures"]) == (128, 8, [])
    assert data["lr"] == pytest.approx(5e-4)


def test_command_markdown_and_overrides(capsys):
    paths = [str(CONFIGS / "ssv2_vit_base_mar50.yaml"), str(CONFIGS / "ucf101_vit_base_mar50.yaml")]
    assert _run(["recipe", "--markdown", *paths, "train.accum_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "| effective batch | 512 | 128 | 512 | 128 |" in out    # Table I first
    assert f"| `{paths[0]}` | 8 | 16 | 2 | 1 | 256 | 1e-3 | 1e-3 |" in out
    assert "effective batch 256 (Table I: 512)" in out
    assert "Table I has no UCF101 column" in out


def test_mar_cli_runs_recipe(capsys):
    from mar.cli import main

    assert main(["recipe", str(CONFIGS / "ssv2_vit_base_mar50.yaml")]) == 0
    out = capsys.readouterr().out
    assert "2e-3 = base 1e-3 x 512 / 256" in out and "no departures" in out
    assert main(["recipe", str(CONFIGS / "missing.yaml")]) == 2
