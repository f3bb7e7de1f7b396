"""The tiny settings every engine test shares, in one place.

``shrink`` is the only thing a test may change in a shipped config: the model size
(``vit_nano``), the clip (4 frames of 32x32, patch 8), the batch per process (2, even for
mixup), the number of epochs and the loader workers (this machine has 2 cores). Dropout,
drop path, mixup/cutmix, RandAugment, erasing, repeats, layer decay, accumulation and
autocast stay as the config ships them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fakegpu import fake_gpu  # noqa: F401  (a fixture for every test file)
from videos import moving_square_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

SHRINK = {
    "model.name": "vit_nano", "model.num_frames": 4, "model.img_size": 32,
    "model.patch_size": 8, "data.num_frames": 4, "data.crop_size": 32,
    "data.short_side": None, "data.num_workers": 0, "data.class_names": None,
    "train.batch_size": 2, "train.device": "cpu", "train.log_every": 1,
    "eval.batch_size": 16,
}


def shrink(config: Path, data: dict[str, Path], steps: int = 4, **extra) -> dict:
    """Dotted overrides that shrink the shipped ``config`` to the tiny model and clip, point
    it at the tiny lists ``data`` (``train``, ``val``, ``test``) and give it the fewest
    epochs that make at least ``steps`` optimizer steps."""
    train = (yaml.safe_load(config.read_text()) or {}).get("train") or {}
    videos = len(data["train"].read_text().splitlines())
    per_epoch = max(videos // SHRINK["train.batch_size"] // train.get("accum_steps", 1), 1)
    lists = {"data.root": None, "data.train_list": str(data["train"]),
             "data.val_list": str(data["val"]), "data.test_list": str(data["test"]),
             "train.epochs": -(-steps // per_epoch)}
    return {**SHRINK, **lists, **extra}


def as_args(overrides: dict) -> list[str]:
    """Dotted overrides as command-line ``key=value`` items."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def shipped_configs() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


@pytest.fixture(scope="session")
def tiny_lists(tmp_path_factory) -> dict[str, Path]:
    """Moving squares (4 classes, 16 frames of 32x32, lossless): 24 training, 4
    validation and 4 test videos, lists with absolute paths."""
    root = tmp_path_factory.mktemp("tiny-lists")
    out = {}
    for split, per_class, seed in (("train", 6, 0), ("val", 1, 1), ("test", 1, 2)):
        listed = moving_square_dataset(root / split, per_class, seed=seed, num_frames=16,
                                       step=1)
        lines = [f"{root / split / line}" for line in listed.read_text().splitlines()]
        out[split] = root / f"{split}.csv"
        out[split].write_text("\n".join(lines) + "\n")
    return out


# the random models of the inference, serving and extraction tests
MODEL = {"name": "vit_nano", "num_classes": 6, "num_frames": 8, "img_size": 64,
         "patch_size": 16, "decoder": True}         # token grid (4, 4, 4): 64 tokens
TINY_MODEL = {"name": "vit_nano", "num_classes": 4, "num_frames": 4, "img_size": 32,
              "patch_size": 8}                       # token grid (2, 4, 4): 32 tokens
CELL_50 = {"name": "cell_running", "ratio": 0.5}


def make_model_dir(path: Path, kwargs: dict = MODEL, masking: dict = CELL_50,
                   class_names: bool = True) -> Path:
    """A mar model directory of a random (seed 0) model, recorded as tested at
    ``masking``; with ``class_names``, a ``classes.txt`` beside it."""
    import torch

    from mar import create_model
    from mar.models.io import save_model

    torch.manual_seed(0)
    save_model(create_model(**kwargs), kwargs, path, masking=masking)
    if class_names:
        classes = kwargs["num_classes"]
        (path / "classes.txt").write_text("\n".join(f"class {i}" for i in range(classes))
                                          + "\n")
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """:data:`MODEL` (with its reconstruction decoder) at cell running 50 %, with class
    names; shared by every test that only reads it."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "mar")
