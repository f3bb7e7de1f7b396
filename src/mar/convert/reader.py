"""Reading weights without executing anything from the file.

``.pth``/``.pt``/``.bin`` files go through ``torch.load(weights_only=True)``, which
refuses any pickled object but tensors, containers and plain values; VideoMAE's
``argparse.Namespace`` of training arguments and ``frozenset`` are allowed too (rebuilding
them runs no code from the file). ``.safetensors`` files hold tensors only. A
transformers directory is read as its ``config.json`` plus ``model.safetensors`` (sharded
or not) or ``pytorch_model.bin``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from .report import ConversionError

WRAPPERS = ("model_state", "model", "module", "state_dict")  # MAR, VideoMAE, DeepSpeed, misc.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class Checkpoint:
    """A file's weights after unwrapping: ``state`` maps names to tensors."""

    path: Path
    state: dict[str, Tensor]
    config: dict | None = None        # a transformers config.json
    notes: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The state dict of a checkpoint file or transformers directory; a one-line
    :class:`ConversionError` naming the file if it is missing or not a checkpoint."""
    path = Path(path)
    if path.is_dir():
        return _read_dir(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (expected a .pth/.bin/.safetensors "
                              "checkpoint or a transformers model directory)")
    obj = _load_file(path)
    notes: list[str] = []
    state = _unwrap(obj, path, notes)
    return Checkpoint(path, _strip_ddp(state, notes), notes=notes)


def _read_dir(path: Path) -> Checkpoint:
    config_file = path / "config.json"
    config = None
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ConversionError(f"{config_file}: not valid JSON ({e})") from None
    if config is not None and config.get("model_type") != "videomae":
        if "name" in config:
            raise ConversionError(f"{path}: already a mar model directory; load it with "
                                  "mar.load_model")
        raise ConversionError(f"{config_file}: model_type {config.get('model_type')!r}, "
                              "expected a transformers VideoMAE model ('videomae')")
    weights = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), None)
    if config is None or weights is None:
        raise ConversionError(f"{path}: expected a transformers model directory (config.json "
                              f"and one of {', '.join(HF_WEIGHTS)})")
    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state |= _load_file(path / shard)
    else:
        state = _unwrap(_load_file(weights), weights, [])
    return Checkpoint(path, state, config=config)


def _load_file(path: Path) -> object:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ConversionError(f"{path}: not a safetensors file ({_first_line(e)})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace, frozenset]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not weights-only, or not a pickle at all
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise ConversionError(
                f"{path}: refused: the file would construct {found[1]}, and mar only "
                "loads weights (torch.load weights_only=True); re-save just the state dict "
                "from a trusted environment") from None
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _is_state(obj: object) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def _unwrap(obj: object, path: Path, notes: list[str]) -> dict[str, Tensor]:
    """Follow ``model_state`` / ``model`` / ``module`` / ``state_dict`` to the tensors."""
    trail = []
    while not _is_state(obj):
        key = next((k for k in WRAPPERS if isinstance(obj, Mapping)
                    and isinstance(obj.get(k), Mapping)), None)
        if key is None:
            found = (f"keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, Mapping)
                     else type(obj).__name__)
            raise ConversionError(f"{path}: no weights found: expected a state dict of tensors, "
                                  f"or one under {'/'.join(WRAPPERS)}; found {found}")
        if isinstance(obj, Mapping) and "model_ema_state" in obj and key == "model_state":
            notes.append("the file also holds model_ema_state (EMA weights): model_state is used")
        trail.append(key)
        obj = obj[key]
    if trail:
        notes.append(f"weights read from {' -> '.join(repr(k) for k in trail)}")
    return dict(obj)


def _strip_ddp(state: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    if all(k.startswith("module.") for k in state):
        notes.append("removed the DistributedDataParallel prefix 'module.'")
        return {k[len("module."):]: v for k, v in state.items()}
    return state
