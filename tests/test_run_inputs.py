"""What a run takes in: a start that fails writes nothing, so the corrected retry runs;
fewer class names than classes names the rest by index; `mar eval CONFIG --checkpoint`
takes the model from the checkpoint and refuses a model setting that differs."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import CONFIGS, make_model_dir, shrink

from mar.cli import main

TINY = {"name": "vit_nano", "num_classes": 10, "num_frames": 4, "img_size": 32,
        "patch_size": 8}                         # tiny_cpu.yaml's classes, the tests' clip


def tiny_yaml(folder, tiny_lists, **extra) -> str:
    """tiny_cpu.yaml shrunk (tests' tiny model and lists), written out as a user's YAML."""
    tree = yaml.safe_load((CONFIGS / "tiny_cpu.yaml").read_text())
    for key, value in (shrink(CONFIGS / "tiny_cpu.yaml", tiny_lists, steps=2) | extra).items():
        section, name = key.split(".")
        tree.setdefault(section, {})[name] = value
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.fixture(scope="module")
def run(tiny_lists, tmp_path_factory):
    """A run trained with a command-line model override (a linear head, not the YAML's
    bridging) and a class-name file that names 2 of its 4 classes."""
    folder = tmp_path_factory.mktemp("run-inputs")
    names = folder / "names.txt"
    names.write_text("left\nright\n")
    config = tiny_yaml(folder, tiny_lists, **{"model.num_classes": 4,
                                              "data.class_names": str(names)})
    out = folder / "run"
    with pytest.warns(UserWarning, match="names 2 of the 4 classes"):
        code = main(["train", config, "model.head=linear", "train.max_steps=2", "--out",
                     str(out)])
    assert code == 0
    return config, out


def test_fewer_class_names_than_classes_still_ends_the_run(run):
    _, out = run
    assert json.loads((out / "summary.json").read_text())["test_video_top1"] >= 0
    header = (out / "confusion.csv").read_text().splitlines()[0]
    assert header.split(",")[1:5] == ["left", "right", "2", "3"]


def test_eval_takes_the_model_from_the_checkpoint(run, tmp_path, capsys):
    config, out = run
    assert main(["eval", config, "--checkpoint", str(out / "best"), "--split", "val",
                 "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "confusion.csv").is_file()
    # data and evaluation settings may change; the model may not
    assert main(["eval", config, "--checkpoint", str(out / "best"), "--split", "val",
                 "--set", "data.test_clips=2", "--set", "model.drop_path=0.3"]) == 0
    capsys.readouterr()
    assert main(["eval", config, "--checkpoint", str(out / "best"), "--split", "val",
                 "--set", "model.head=bridging"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.head is 'bridging'" in err[0] and "'linear'" in err[0]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"num_classes": 7}}))
    assert main(["eval", str(other), "--checkpoint", str(out / "best"), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.num_classes is 7" in err[0]


@pytest.mark.parametrize("bad", [
    {"train.init": "weights/missing/"},          # the README's convert step not yet run
    {"data.val_list": "lists/missing.csv"},
    {"data.class_names": "NAMES"},              # more names than classes
])
def test_a_start_that_fails_writes_nothing_and_the_retry_runs(tiny_lists, tmp_path, capsys,
                                                             bad):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(12)))
    bad = {k: str(names) if v == "NAMES" else v for k, v in bad.items()}
    config = tiny_yaml(tmp_path, tiny_lists)
    out = tmp_path / "runs" / "r"
    args = ["train", config, "train.max_steps=1", "--out", str(out)]
    assert main([*args, *(f"{k}={v}" for k, v in bad.items())]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
    fixed = []
    if "train.init" in bad:                      # the converted weights, now there
        fixed = [f"train.init={make_model_dir(tmp_path / 'init', TINY)}"]
    assert main([*args, *fixed]) == 0
