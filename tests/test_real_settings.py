"""Every shipped config, as shipped, through the documented commands.

Only the model and the clip are shrunk (``conftest.shrink``). Each config goes through
the CLI: ``train`` in a real process, SIGKILLed after a mid-epoch checkpoint, then
``--resume auto`` must log exactly the losses of an uninterrupted run; then ``eval`` on
``best``, ``predict`` and ``export`` (pretraining configs: train, kill and resume).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, as_args, shipped_configs, shrink

from mar.cli import main
from mar.config import load_config

CONFIGS = shipped_configs()


def _losses(run: Path) -> dict[int, float]:
    """Step -> loss from metrics.jsonl; a step logged twice (re-run after a resume)
    keeps its last value."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def _kill_after_checkpoint(cmd: list[str], run: Path, step: int) -> None:
    """Run ``cmd``, SIGKILL it once ``checkpoint-<step>`` is complete."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / f"checkpoint-{step:08d}" / "state.pt").is_file():
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the run ended (code {proc.returncode}) before it could be killed: "
                    f"{proc.stderr.read()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_shipped_config_trains_resumes_exactly_and_serves(config, tiny_lists, tmp_path,
                                                          capsys):
    # the test split is evaluated by `mar eval` only (training would test it twice more)
    overrides = shrink(config, tiny_lists, **{"train.save_every": 1, "data.test_list": None})
    shipped = yaml.safe_load(config.read_text())
    cfg = load_config(config, as_args(overrides))
    # what the shrink keeps: every training setting of the file
    for section, values in shipped.items():
        for key, value in (values or {}).items():
            if f"{section}.{key}" not in overrides:
                got = getattr(getattr(cfg, section), key)
                assert json.loads(json.dumps(got)) == json.loads(json.dumps(value)), key
    command = "pretrain" if cfg.train.task == "pretrain" else "train"
    args = [command, str(config), *as_args(overrides)]

    ref = tmp_path / "reference"
    assert main([*args, "--out", str(ref)]) == 0
    reference = _losses(ref)
    assert len(reference) >= 4 and all(v == v for v in reference.values())  # no NaN

    run = tmp_path / "killed"
    _kill_after_checkpoint([sys.executable, "-m", "mar", *args, "--out", str(run)],
                           run, step=1)
    capsys.readouterr()
    assert main([*args, "--out", str(run)]) != 0  # never overwritten unasked
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--out", str(run), "--resume", "auto"]) == 0
    resumed = _losses(run)
    assert sorted(resumed) == sorted(reference)
    assert resumed == reference  # bit for bit: same dropout, drop path, mixup, masks
    if cfg.train.task == "pretrain":
        return

    best = run / "best"
    assert (best / "model.safetensors").is_file()
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", str(config), *as_args(overrides),
                 f"data.test_list={tiny_lists['test']}", "--checkpoint", str(best),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test-time masking:" in printed
    result = json.loads((out / "eval.json").read_text())
    views = cfg.data.test_clips * cfg.data.test_crops
    assert result["videos"] == 4 and result["views"] == 4 * views
    assert (out / "confusion.png").is_file() and (out / "per_class.json").is_file()

    video = Path(tiny_lists["test"].read_text().split()[0])
    assert main(["predict", str(video), "--checkpoint", str(best), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["error"] is None and prediction["views"] == views
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(best), "--out", str(onnx)]) == 0
    assert onnx.stat().st_size > 0


@pytest.fixture(scope="module")
def large_lists(tmp_path_factory) -> dict[str, Path]:
    """Moving squares as the tiny lists' (16 training videos, not 24) at 64x64: twice
    the shrunk crop (32), so every decode of a test view really resizes (short side
    64 -> 32), as 256-480 px videos do for a 224 crop."""
    from videos import moving_square_dataset

    root = tmp_path_factory.mktemp("large-lists")
    out = {}
    for split, per_class, seed in (("train", 4, 0), ("val", 1, 1), ("test", 1, 2)):
        listed = moving_square_dataset(root / split, per_class, seed=seed, num_frames=16,
                                       step=1, size=64)
        lines = [f"{root / split / line}" for line in listed.read_text().splitlines()]
        out[split] = root / f"{split}.csv"
        out[split].write_text("\n".join(lines) + "\n")
    return out


WORKERS_CONFIG = ROOT / "configs" / "k400_vit_base_mar50.yaml"


@pytest.mark.slow
def test_shipped_config_with_loader_workers_and_resize(large_lists, tmp_path, capsys):
    """The K400 MAR 50 % config with 2 loader workers (persistent, the epoch carried by
    the sampler) and its resize (``short_side`` as shipped: unset, i.e. the crop size,
    here 32 for 64-px videos): killed after a checkpoint, ``--resume auto`` logs exactly
    the uninterrupted run's losses (validation each epoch decodes through the resize);
    then the test views and ``predict`` do."""
    shipped = yaml.safe_load(WORKERS_CONFIG.read_text())
    assert "short_side" not in shipped["data"]             # as shipped: the crop size
    overrides = shrink(WORKERS_CONFIG, large_lists,
                       **{"train.save_every": 1, "data.test_list": None,
                          "data.num_workers": 2, "data.short_side": None})
    cfg = load_config(WORKERS_CONFIG, as_args(overrides))
    assert cfg.data.num_workers == 2 and cfg.data.repeats == shipped["data"]["repeats"]
    args = ["train", str(WORKERS_CONFIG), *as_args(overrides)]

    ref = tmp_path / "reference"
    assert main([*args, "--out", str(ref)]) == 0
    reference = _losses(ref)
    # 16 videos / batch 2 / accumulation 4: 2 steps an epoch, 2 epochs
    assert sorted(reference) == [1, 2, 3, 4] and cfg.train.epochs == 2
    assert all(v == v for v in reference.values())

    # killed at the epoch boundary: the resumed run starts its loader (and forks its
    # workers) in epoch 1, where the reference's persistent workers have run since epoch
    # 0; the batches, and the global RNG stream of dropout and drop path, must match
    run = tmp_path / "killed"
    _kill_after_checkpoint([sys.executable, "-m", "mar", *args, "--out", str(run)],
                           run, step=2)
    assert main([*args, "--out", str(run), "--resume", "auto"]) == 0
    assert _losses(run) == reference  # bit for bit with 2 workers

    # the resize: the 64-px test videos' views (the one builder eval and predict use)
    # are decoded at short side 32 and come out at the 32-px crop
    from mar.data import VideoRecord

    records = [VideoRecord(line.split()[0], int(line.split()[1]))
               for line in large_lists["test"].read_text().splitlines()]
    views = cfg.data.test_clips * cfg.data.test_crops
    item = cfg.views_dataset(records, cfg.data.test_clips, cfg.data.test_crops)[0]
    assert item["valid"], item["error"]
    assert tuple(item["video"].shape) == (views, 3, 4, 32, 32)
    assert item["timing"]["decode"] > 0

    capsys.readouterr()
    video = Path(large_lists["test"].read_text().split()[0])
    assert main(["predict", str(video), "--checkpoint", str(run / "best"), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["error"] is None and prediction["views"] == views
