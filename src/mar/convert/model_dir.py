"""mar's own format: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` holds the :func:`mar.create_model` keyword arguments (with ``name``), so
the model is rebuilt exactly and its weights loaded strictly. ``conversion.json``, when
present, records where the weights came from (the conversion report).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..engine.weights import load_weights
from ..models import MAR, create_model
from .report import ConversionError, ConversionReport


def save_model(model: nn.Module, config: dict, path: str | Path, *, overwrite: bool = False,
               report: ConversionReport | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` atomically.

    Everything is written to a temporary directory beside ``path``, then renamed into
    place, so a crash never leaves a half-written model. An existing ``path`` is an error
    unless ``overwrite``. ``config`` must rebuild ``model`` (checked, on the meta device).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConversionError(f"{path}: already exists (overwrite=True, --overwrite, replaces it)")
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_config(config, weights, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        if report is not None:
            record = dataclasses.asdict(report)
            (tmp / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_model(path: str | Path) -> tuple[MAR, dict]:
    """The model of a mar model directory, loaded strictly, and its config (eval mode)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file() or not (path / "model.safetensors").is_file():
        raise ConversionError(f"{path}: not a mar model directory (expected config.json and "
                              "model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "name" not in config:
        raise ConversionError(f"{config_file}: expected the create_model arguments with 'name'")
    try:
        model = create_model(**config)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{config_file}: {e}") from None
    load_weights(model, path)
    return model.eval(), config


def _check_config(config: dict, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        with torch.device("meta"):
            expected = create_model(**config).state_dict()
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{path}: config does not build a model: {e}") from None
    wrong = sorted(set(expected) ^ set(weights)) + [
        k for k in expected if k in weights and expected[k].shape != weights[k].shape]
    if wrong:
        raise ConversionError(f"{path}: config does not describe this model "
                              f"(differs at {', '.join(wrong[:3])})")
