"""End-to-end training, resume after SIGKILL, and torchrun with 2 gloo processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from videos import moving_square_dataset

from mar.config import load_config
from mar.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def overrides(data: Path, **extra) -> list[str]:
    base = {
        "model.name": "vit_nano", "model.num_classes": 4, "model.num_frames": 8,
        "model.img_size": 32, "model.patch_size": 8, "model.drop_path": 0.0,
        "model.head_dropout": 0.0,
        "data.root": str(data.parent), "data.train_list": str(data),
        "data.sampling": "segment", "data.num_frames": 8, "data.crop_size": 32,
        "data.scale": "[0.8, 1.0]", "data.flip_prob": 0.0, "data.rand_augment": "null",
        "data.erase_prob": 0.0, "data.mixup": 0.0, "data.cutmix": 0.0,
        "data.label_smoothing": 0.0, "data.num_workers": 0, "data.test_clips": 1,
        "data.test_crops": 1,
        "train.batch_size": 8, "train.base_lr": 2e-3, "train.lr_scaling": "false",
        "train.warmup_epochs": 1, "train.layer_decay": 1.0, "train.weight_decay": 0.0,
        "train.device": "cpu", "train.log_every": 1, "eval.batch_size": 16,
    }
    base |= extra
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    d = tmp_path_factory.mktemp("squares")
    train_list = moving_square_dataset(d / "train", per_class=12, seed=0)
    val_list = moving_square_dataset(d / "val", per_class=6, seed=1)
    return train_list, val_list


def test_tiny_mar_model_learns_motion_direction(squares, tmp_path):
    train_list, val_list = squares
    cfg = load_config(None, overrides(train_list, **{
        "data.val_list": str(val_list), "data.test_list": str(val_list),
        "train.epochs": 30, "train.eval_every": 10, "train.base_lr": 1e-3,
        "masking.ratio": 0.5, "train.rec_weight": 0.1}))
    summary = train(cfg, tmp_path / "run")
    # chance is 25 %; the class is only in the motion
    assert summary["test_video_top1"] > 60, summary
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 30 * 6
    assert sum(losses[-12:]) / 12 < 0.7 * sum(losses[:12]) / 12
    assert (tmp_path / "run" / "confusion.png").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert summary["skipped_videos"] == 0 and summary["views"] == 1


def _losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").open():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


def _cmd(train_list, run, *extra):
    return [sys.executable, "-m", "mar.cli", "train", "--out", str(run), *extra,
            *overrides(train_list, **{"train.epochs": 2, "train.batch_size": 4,
                                      "train.save_every": 2, "train.deterministic": "true",
                                      "data.rand_augment": "rand-m9-mstd0.5-inc1",
                                      "data.mixup": 0.8, "data.cutmix": 1.0,
                                      "data.flip_prob": 0.5})]


def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(squares, tmp_path):
    train_list, _ = squares
    ref = tmp_path / "ref"
    subprocess.run(_cmd(train_list, ref), check=True, capture_output=True)
    reference = _losses(ref)
    assert len(reference) == 24  # 2 epochs x 12 steps

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(train_list, run), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and max(_losses(run), default=0) >= 15:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_losses(run))
    assert killed_at < 24, "the run finished before it could be killed"
    # a fresh run must not overwrite it
    again = subprocess.run(_cmd(train_list, run), capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr
    subprocess.run(_cmd(train_list, run, "--resume", "auto"), check=True, capture_output=True)
    resumed = _losses(run)
    assert sorted(resumed) == list(range(1, 25))
    for step in range(1, 25):  # the re-run steps (after the last checkpoint) included
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_two_gloo_processes_evaluate_like_one(squares, tmp_path):
    train_list, _ = squares
    cfg = load_config(None, overrides(train_list))
    torch.manual_seed(0)
    weights = tmp_path / "ckpt"
    weights.mkdir()
    save_file(cfg.model.build().state_dict(), str(weights / "model.safetensors"))
    args = ["eval", "--checkpoint", str(weights), "--split", "test",
            *overrides(train_list, **{"data.test_list": str(train_list), "data.test_clips": 2,
                                      "data.test_crops": 3, "eval.batch_size": 5})]
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "mar.cli", *args, "--out", str(one)], check=True,
                   capture_output=True)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29517", "-m", "mar.cli", *args, "--out", str(two)],
                   check=True, capture_output=True, env=env)
    a = json.loads((one / "eval.json").read_text())
    b = json.loads((two / "eval.json").read_text())
    assert a["views"] == b["views"] == 48 * 6 and a["videos"] == b["videos"] == 48
    for key in ("clip_top1", "clip_top5", "video_top1", "video_top5"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key
    assert (one / "confusion.csv").read_text() == (two / "confusion.csv").read_text()


def test_two_gloo_processes_train(squares, tmp_path):
    train_list, _ = squares
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29518", "-m", "mar.cli", "train", "--out", str(run),
           *overrides(train_list, **{"train.epochs": 1, "train.batch_size": 4,
                                     "train.max_steps": 3})]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "effective batch 8" in out.stdout
    assert sorted(_losses(run)) == [1, 2, 3]


def test_pretrain_then_finetune_from_it(squares, tmp_path):
    """`mar pretrain` (with a validation list in the config, which it must not evaluate)
    learns to reconstruct; `train.init` then starts a fine-tuning without a decoder from
    its encoder, leaving only the new head initialised."""
    train_list, val_list = squares
    pre = tmp_path / "pre"
    args = overrides(train_list, **{"data.val_list": str(val_list), "train.epochs": 6,
                                    "masking.name": "tube", "masking.ratio": 0.75,
                                    "model.norm_target": "false"})
    out = subprocess.run([sys.executable, "-m", "mar.cli", "pretrain", "--out", str(pre),
                          *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    losses = list(_losses(pre).values())
    assert len(losses) == 6 * 6
    assert sum(losses[-6:]) < 0.7 * sum(losses[:6]), losses
    ckpt = sorted(pre.glob("checkpoint-*"))[-1]
    encoder = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items()
               if k.startswith("encoder.")}
    assert encoder and any(k.startswith("decoder.") for k in
                           load_file(str(ckpt / "model.safetensors")))

    cfg = load_config(None, overrides(train_list, **{
        "model.head": "linear", "masking.name": "none", "masking.ratio": 0.0,
        "train.rec_weight": 0.0, "train.init": str(ckpt), "train.epochs": 1,
        "train.max_steps": 1, "train.base_lr": 1e-12, "train.min_lr": 0.0}))
    train(cfg, tmp_path / "ft")
    tuned = load_file(str(sorted((tmp_path / "ft").glob("checkpoint-*"))[-1] /
                          "model.safetensors"))
    assert not any(k.startswith("decoder.") for k in tuned)
    for k, v in encoder.items():  # lr ~0: the encoder is the pretrained one
        assert torch.allclose(tuned[k], v, atol=1e-8), k
