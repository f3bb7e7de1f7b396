"""The one loader: a trained model and its settings from any folder or file mar writes.

:func:`load_model` takes a training run (its ``best/``, else its newest checkpoint), a
checkpoint, a model directory (``mar convert``, ``save_model``) or a ``.safetensors``
file. Every checkpoint and model directory carries its settings as small files beside
the weights, read without unpickling anything:

- a checkpoint: ``config.yaml`` (the run's resolved config) and ``masking.json``;
- a model directory: ``config.json`` (the ``create_model`` arguments) and
  ``masking.json`` (the test-time masking the weights were trained for).

Checkpoints written before those files existed are read from ``state.pt`` (on the CPU,
``weights_only``) or the run's ``config.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from pydantic import ValidationError

from ..config import (
    Config,
    ConfigError,
    ModelConfig,
    build_config,
    load_config,
    parse_override,
    read_config,
)
from ..masking import MaskingStrategy, make_masking
from ..models import MAR
from ..models.io import empty_model, has_decoder, load_weights, read_model_dir, weights_file
from ..runtime.device import resolve_device


def load_model(path: str | Path, config: str | Path | None = None,
               overrides: list[str] = (), device: str | torch.device | None = "cpu"
               ) -> tuple[MAR, Config]:
    """A model (eval mode, on ``device``: see :func:`~mar.runtime.device.resolve_device`)
    and its config.

    The config is ``config`` if given; else the one beside the weights (see the module
    docstring); else, for bare weights, the defaults with ``overrides``. The
    ``key.path=value`` overrides come last. The model gets a reconstruction decoder
    exactly when the weights hold one (training adds it whenever lambda > 0), no
    classifier when it is a pretraining run's, and the weights load strictly.
    """
    file = weights_file(path)
    cfg = _find_config(file.parent, config, list(overrides), path)
    model_cfg = cfg.model.model_copy(update={"decoder": has_decoder(file)} | (
        {"head": "none"} if cfg.train.task == "pretrain" else {}))  # as training built it
    model = empty_model(model_cfg.build)
    load_weights(model, file)
    model = model.to(resolve_device(device)).eval()
    return model, cfg.model_copy(update={"model": model_cfg})


# model settings that training uses and inference ignores: a config may differ in them
TRAINING_ONLY = frozenset({"drop_path", "head_dropout", "decoder"})


def _find_config(folder: Path, config, overrides: list[str], path) -> Config:
    """The checkpoint's own config defines the model; ``config`` (a YAML file, laid over
    the checkpoint's config section by section) and the overrides change everything
    else. A model setting of theirs that differs from the checkpoint's is a
    :class:`ConfigError` naming the key. Bare weights have no config of their own: then
    ``config`` and the overrides define everything."""
    own, own_where = _own_config(folder)
    if own is None:
        if config is None and not overrides:
            raise ConfigError(f"{path}: no config found beside the weights; pass --config "
                              "or --set key=value settings")
        return load_config(config, overrides)
    own_model = own.get("model") or {}
    given, where = read_config(config) if config is not None else ({}, own_where)
    # the model settings given, the overrides last: each must be the checkpoint's
    stated = {key: (value, where) for key, value in (given.get("model") or {}).items()}
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("model."):
            stated[key.removeprefix("model.")] = (value, "--set")
    _same_model(own_model, stated, own_where)
    tree = dict(own)
    for section, value in given.items():            # the config file, section by section
        if section != "model":
            mine = own.get(section)
            tree[section] = (mine | value if isinstance(mine, dict) and isinstance(value, dict)
                             else value)
    tree["train"] = (tree.get("train") or {}) | {
        "task": (own.get("train") or {}).get("task", "finetune")}
    rest = [o for o in overrides if not o.strip().startswith("model.")]
    return build_config(tree, rest, where)


def _own_config(folder: Path) -> tuple[dict | None, str]:
    """The config tree saved with the weights, and where: a checkpoint's config.yaml, a
    checkpoint of before's state.pt, its run's config.yaml, a model directory's files."""
    if (folder / "config.yaml").is_file():                    # a checkpoint
        return read_config(folder / "config.yaml")
    if (folder / "state.pt").is_file():                       # a checkpoint of before
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        if "config" in state:
            return state["config"], str(folder / "state.pt")
    if (folder.parent / "config.yaml").is_file():
        return read_config(folder.parent / "config.yaml")
    if (folder / "config.json").is_file():                    # a model directory
        return model_dir_tree(folder), str(folder)
    return None, ""


def _same_model(own: dict, stated: dict[str, tuple], own_where: str) -> None:
    """Refuse a stated model setting ``key: (value, where)`` that differs from the
    checkpoint's ``own`` (training-only settings aside)."""
    base = ModelConfig.model_validate(own)
    for key, (value, where) in stated.items():
        if key in TRAINING_ONLY:
            continue
        try:
            new = getattr(ModelConfig.model_validate(own | {key: value}), key)
        except ValidationError as e:
            raise ConfigError(f"{where}: model.{key}: "
                              f"{e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        if new != getattr(base, key):
            raise ConfigError(f"{where}: model.{key} is {value!r}, but the checkpoint "
                              f"({own_where}) was trained with {getattr(base, key)!r}; its "
                              f"config defines the model: leave model.{key} out")


def model_dir_tree(folder: Path) -> dict:
    """The config tree of a mar model directory: its model, clip size and test masking.

    A directory written before ``masking.json`` existed runs on all tokens (a note says
    so): the safe choice, since a model trained on all tokens loses accuracy on half."""
    model, masking = read_model_dir(folder)
    if masking is None:
        print(f"note: {folder} has no masking.json; using all tokens at test time "
              "(pass eval_masking.* to choose)", file=sys.stderr)
        masking = {"name": "none", "ratio": 0.0}
    return {"model": model, "eval_masking": masking,
            "data": {"num_frames": model.get("num_frames", 16),
                     "crop_size": model.get("img_size", 224)}}


def eval_masking(cfg: Config, ratio: float | None = None) -> MaskingStrategy:
    """``--mask-ratio``: cell running at that ratio; otherwise the config's test mask."""
    return make_masking("cell_running", ratio) if ratio is not None else cfg.test_masking()


def describe_masking(masking: MaskingStrategy, grid: tuple[int, int, int]) -> str:
    """One line naming the test-time masking and the tokens it keeps."""
    mask = masking(1, grid, train=False)
    what = "none" if mask.num_masked == 0 else f"{masking.name} {masking.ratio:.0%}"
    return (f"test-time masking: {what} ({mask.num_visible} of {mask.num_tokens} tokens "
            "visible)")
