"""End-to-end training (it learns), torchrun with 2 gloo processes, pretraining then
fine-tuning from it. Exact resume of every shipped config: test_real_settings.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from videos import moving_square_dataset

from mar.config import load_config
from mar.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU = ROOT / "configs" / "tiny_cpu.yaml"


def overrides(data: Path, **extra) -> list[str]:
    """The shipped ``configs/tiny_cpu.yaml`` on moving squares: 4 classes of 8 frames of
    32x32, left/right swapped by the flip (as on SSv2); its dropout, RandAugment,
    erasing, label smoothing and weight decay stay on."""
    base = {
        "model.num_classes": 4, "model.img_size": 32, "model.patch_size": 8,
        "data.crop_size": 32, "data.flip_pairs": "[[0, 1]]",
        "data.root": str(data.parent), "data.train_list": str(data), "train.log_every": 1,
    }
    base |= extra
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    d = tmp_path_factory.mktemp("squares")
    train_list = moving_square_dataset(d / "train", per_class=12, seed=0)
    val_list = moving_square_dataset(d / "val", per_class=6, seed=1)
    return train_list, val_list


@pytest.fixture(scope="module")
def learned(squares, tmp_path_factory):
    """A tiny MAR model trained on moving squares (30 epochs), and its summary."""
    train_list, val_list = squares
    cfg = load_config(TINY_CPU, overrides(train_list, **{
        "data.val_list": str(val_list), "data.test_list": str(val_list),
        "train.epochs": 30, "train.eval_every": 10, "train.base_lr": 1e-3,
        "masking.ratio": 0.5, "train.rec_weight": 0.1}))
    run = tmp_path_factory.mktemp("learned") / "run"
    return run, train(cfg, run)


def test_tiny_mar_model_learns_motion_direction(learned):
    run, summary = learned
    # chance is 25 %; the class is only in the motion
    assert summary["test_video_top1"] > 60, summary
    log = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 30 * 6
    assert sum(losses[-12:]) / 12 < 0.7 * sum(losses[:12]) / 12
    assert (run / "confusion.png").is_file()
    assert (run / "config.yaml").is_file()
    assert summary["skipped_videos"] == 0 and summary["views"] == 1


def test_int8_holds_the_accuracy_gates_on_the_trained_model(learned, squares, tmp_path,
                                                            monkeypatch):
    """The three int8 paths (ONNX Runtime's, OpenVINO's, torchao's) of the trained model,
    against torch fp32 on its 72 training and validation videos: top-1 within 0.5 point
    and the same top-1 class on at least 98 % of the videos (docs/deploy.md's gates); the
    fp32 runtimes agree on every video; `mar eval --int8` runs."""
    import mar.inference.runtime as rt
    from mar.cli import main
    from mar.engine.evaluate import merge_views, predict_views

    run, _ = learned
    both = tmp_path / "both.csv"
    both.write_text("".join(f"{listed.parent / line}\n" for listed in squares
                            for line in listed.read_text().splitlines()))
    from mar.data import read_list, view_loader
    from mar.inference import load_model
    from mar.inference.runtime import runtime_model

    model, cfg = load_model(run)
    masking = cfg.test_masking()
    records = read_list(both)
    views = cfg.views_dataset(records, 1, 1)
    top = {}
    for runtime, int8 in (("torch", False), ("onnxruntime", False), ("openvino", False),
                          ("onnxruntime", True), ("openvino", True), ("torch", True)):
        with monkeypatch.context() as patch:
            if runtime == "torch":   # torchao's int8 is refused on CPUs without VNNI/AMX
                patch.setattr(rt, "int8_dot", lambda: True)
            m = runtime_model(model, masking, run, runtime, int8=int8)
        out = predict_views(m, view_loader(views, 8), masking)
        scores, labels, _ = merge_views(out["scores"], out["video"], out["label"],
                                        out["valid"])
        top[runtime, int8] = scores.argmax(1)
    ref = top["torch", False]
    assert len(ref) == 72
    accuracy = {k: 100 * (v == labels).float().mean().item() for k, v in top.items()}
    assert accuracy["torch", False] > 60, accuracy
    assert torch.equal(top["onnxruntime", False], ref) and torch.equal(top["openvino", False],
                                                                      ref)
    for runtime in ("onnxruntime", "openvino", "torch"):
        assert abs(accuracy[runtime, True] - accuracy["torch", False]) <= 0.5, accuracy
        assert (top[runtime, True] == ref).float().mean().item() >= 0.98, runtime
    assert main(["eval", "--checkpoint", str(run), "--runtime", "onnxruntime", "--int8",
                 "--split", "val"]) == 0


def _losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").open():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


def test_two_gloo_processes_evaluate_like_one(squares, tmp_path):
    train_list, _ = squares
    cfg = load_config(TINY_CPU, overrides(train_list))
    torch.manual_seed(0)
    weights = tmp_path / "ckpt"
    weights.mkdir()
    save_file(cfg.model.build().state_dict(), str(weights / "model.safetensors"))
    args = ["eval", "--checkpoint", str(weights), "--split", "test", str(TINY_CPU),
            *overrides(train_list, **{"data.test_list": str(train_list), "data.test_clips": 2,
                                      "data.test_crops": 3, "eval.batch_size": 5})]
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "mar", *args, "--out", str(one)], check=True,
                   capture_output=True)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29517", "-m", "mar", *args, "--out", str(two)],
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
           "--master_port", "29518", "-m", "mar", "train", "--out", str(run),
           str(TINY_CPU), *overrides(train_list, **{"train.epochs": 1, "train.batch_size": 4,
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
    out = subprocess.run([sys.executable, "-m", "mar", "pretrain", "--out", str(pre),
                          str(TINY_CPU), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    losses = list(_losses(pre).values())
    assert len(losses) == 6 * 6
    assert sum(losses[-6:]) < 0.7 * sum(losses[:6]), losses
    ckpt = sorted(pre.glob("checkpoint-*"))[-1]
    encoder = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items()
               if k.startswith("encoder.")}
    assert encoder and any(k.startswith("decoder.") for k in
                           load_file(str(ckpt / "model.safetensors")))

    cfg = load_config(TINY_CPU, overrides(train_list, **{
        "model.head": "linear", "masking.name": "none", "masking.ratio": 0.0,
        "train.rec_weight": 0.0, "train.init": str(ckpt), "train.epochs": 1,
        "train.max_steps": 1, "train.base_lr": 1e-12, "train.min_lr": 0.0}))
    train(cfg, tmp_path / "ft")
    tuned = load_file(str(sorted((tmp_path / "ft").glob("checkpoint-*"))[-1] /
                          "model.safetensors"))
    assert not any(k.startswith("decoder.") for k in tuned)
    for k, v in encoder.items():  # lr ~0: the encoder is the pretrained one
        assert torch.allclose(tuned[k], v, atol=1e-8), k
