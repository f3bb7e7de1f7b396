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
