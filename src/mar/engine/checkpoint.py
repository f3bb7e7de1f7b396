"""Checkpoints: atomic, resumable, and loadable without executing code.

A run directory holds:

- ``checkpoint-<step:08d>/``: ``model.safetensors`` (the model's state dict),
  ``state.pt`` (step, epoch, sampler epoch, optimizer, grad scaler, RNG states, the
  resolved config, metrics), and two small files a loader reads without unpickling
  anything: ``config.yaml`` (the resolved config) and ``masking.json`` (the test-time
  masking). The last ``keep_last`` are kept.
- ``best/``: the same two files for the best ``best_metric`` so far; its ``state.pt``
  has no optimizer, scaler or RNG state (it is for evaluation, prediction and export).
- ``.tmp-*``: a directory being written, or one a crash left: never read; removed by the
  next save and by a resume (:func:`prepare_run_dir`).
- ``.old-<name>``: ``<name>`` as it was while it is being replaced; a crash between the
  two renames leaves it, and :func:`clean_run_dir` puts it back.

``state.pt`` holds tensors and plain Python values only (checked before writing), so
``torch.load(..., weights_only=True)`` reads it. Every file is written into a temporary
sibling directory and fsynced, then the directory is renamed into place: a crash leaves
the earlier checkpoints as they were and nothing half-written that a resume would take.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import uuid
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .. import atomic
from ..atomic import TMP
from ..models.io import load_weights

PREFIX = "checkpoint-"
BEST = "best"
STEP_NAME = re.compile(r"checkpoint-(\d+)")
STATE_KEYS = {"step", "epoch", "sampler_epoch", "optimizer", "scaler", "config", "metrics",
              "rng"}
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", BEST)


def rng_state() -> dict:
    """This process's RNG states (torch CPU, CUDA, NumPy's global, Python's ``random``)
    as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                      int(has_gauss), float(cached)],
            "python": random.getstate()}


def restore_rng(state: dict) -> None:
    """Restore what :func:`rng_state` returned (on whatever device it was loaded to)."""
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, scaler, *, epoch: int,
                    sampler_epoch: int, config: dict, metrics: dict, keep_last: int = 3,
                    best_metric: float | None = None, higher_is_better: bool = True,
                    extra: dict | None = None) -> Path:
    """Write ``checkpoint-<step>``, keep the last ``keep_last``, and replace ``best/`` when
    ``best_metric`` beats the one stored there (NaN never does). ``extra``: more plain
    entries for ``state.pt`` (e.g. every process's RNG). Returns the checkpoint's path."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if clash := STATE_KEYS & set(extra or {}):
        raise ValueError(f"extra state may not replace {sorted(clash)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_run_dir(run_dir)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = plain({"step": step, "epoch": epoch, "sampler_epoch": sampler_epoch,
                   "optimizer": optimizer.state_dict(),
                   "scaler": None if scaler is None else scaler.state_dict(),
                   "config": config, "metrics": metrics, "rng": rng_state(), **(extra or {})},
                  "state")
    path = run_dir / f"{PREFIX}{step:08d}"
    _write_dir(path, weights, state, config)
    for old in _checkpoints(run_dir)[:-keep_last]:
        _remove(old)
    if best_metric is not None and _improves(run_dir / BEST, float(best_metric),
                                             higher_is_better):
        best = plain({"step": step, "epoch": epoch, "sampler_epoch": sampler_epoch,
                      "config": config, "metrics": metrics, "best_metric": float(best_metric),
                      "higher_is_better": higher_is_better}, "best state")
        _write_dir(run_dir / BEST, weights, best, config)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-<step>`` (for ``--resume auto``), or None.
    Read-only: temporaries are ignored here and removed by :func:`clean_run_dir`."""
    run_dir = Path(run_dir)
    found = _checkpoints(run_dir) if run_dir.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model, optimizer=None, scaler=None,
                    map_location="cpu") -> dict:
    """Load the weights strictly and, if given, the optimizer and grad-scaler state;
    return the training state (RNG states untouched: call :func:`restore_rng`).

    A model that does not fit (missing or unexpected keys, other shapes) or an optimizer
    with other parameter groups is a one-line ``ValueError`` naming the file and the first
    keys. ``state.pt`` is always read on the CPU, whatever ``map_location`` says (it is
    kept for callers written for ``torch.load``): torch's RNG and generator setters need
    CPU tensors, and ``optimizer.load_state_dict`` moves each state tensor beside its
    parameter itself, leaving Adam's ``step`` on the CPU where it belongs.
    """
    path = Path(path)
    file = path / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no state.pt (not a mar checkpoint directory)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{file}: no optimizer state (best/ keeps the weights only); "
                             f"resume from a {PREFIX}<step> directory")
        _check_groups(state["optimizer"], optimizer, file)
    load_weights(model, path)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    return state


def check_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """What :func:`prepare_run_dir` would refuse, checked without touching anything."""
    path = Path(path)
    if resume and overwrite:
        raise ValueError("--resume auto and --overwrite contradict each other: pass one")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a run directory")
    if path.is_dir() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(f"{path} is not empty: pass --resume auto to continue "
                                  "that run or --overwrite to start afresh")
        if not any((path / m).exists() for m in RUN_MARKERS) and not _checkpoints(path):
            raise FileExistsError(f"{path} is not empty and holds no mar run (no config.yaml,"
                                  " metrics.jsonl or checkpoint): --overwrite will not delete "
                                  "it; choose another --out")


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Create the run directory. A non-empty one is refused unless ``resume`` (then
    what a crash left is cleaned up) or ``overwrite`` (then its contents are deleted, if it
    looks like a run directory: ``config.yaml``, ``metrics.jsonl``, a checkpoint...)."""
    path = Path(path)
    check_run_dir(path, resume=resume, overwrite=overwrite)
    if path.is_dir() and any(path.iterdir()):
        if resume:
            clean_run_dir(path)
        else:
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_run_dir(run_dir: str | Path) -> None:
    """Undo what a crash mid-save left (:func:`mar.atomic.recover`)."""
    atomic.recover(run_dir)


def plain(value, where: str = "state"):
    """``value`` with NumPy scalars made Python numbers; a ``TypeError`` naming the entry
    for anything ``torch.load(weights_only=True)`` would refuse (and is not needed)."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or type(value) in (bool, int, float, str, torch.Tensor, torch.Size,
                                        torch.dtype, torch.device):
        return value
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot "
                    "go in state.pt (torch.load(weights_only=True) would refuse it); store "
                    "tensors and plain Python values")


def _checkpoints(run_dir: Path) -> list[Path]:
    """Complete ``checkpoint-<step>`` directories, oldest first."""
    found = [p for p in run_dir.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir()
             and (p / "model.safetensors").is_file() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def _write_dir(target: Path, weights: dict, state: dict, config: dict) -> None:
    """The checkpoint's files, written and swapped in atomically
    (:func:`mar.atomic.write_dir`)."""
    import yaml

    masking = config.get("eval_masking") or config.get("masking") or {"name": "none"}

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / "masking.json").write_text(json.dumps(masking, indent=1) + "\n")

    atomic.write_dir(target, write)


def _remove(path: Path) -> None:
    """Delete a directory: first out of sight (one rename), then its files."""
    trash = path.with_name(f"{TMP}deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    shutil.rmtree(trash)


def best_metric(run_dir: str | Path) -> float | None:
    """The score of the run's ``best/`` checkpoint, or None before there is one."""
    file = Path(run_dir) / BEST / "state.pt"
    return (torch.load(file, map_location="cpu", weights_only=True)["best_metric"]
            if file.is_file() else None)


def _improves(best_dir: Path, value: float, higher_is_better: bool) -> bool:
    if math.isnan(value):
        return False
    previous = best_metric(best_dir.parent)
    if previous is None:
        return True
    return value > previous if higher_is_better else value < previous


def _check_groups(saved: dict, optimizer, file: Path) -> None:
    """The saved parameter groups must hold the optimizer's parameters, group by group."""
    ours = [(g.get("names"), len(g["params"])) for g in optimizer.param_groups]
    theirs = [(g.get("names"), len(g["params"])) for g in saved["param_groups"]]
    for i, (a, b) in enumerate(zip_longest(theirs, ours, fillvalue=(None, 0))):
        if a != b:
            diff = sorted(set(a[0] or []) ^ set(b[0] or []))[:3]
            raise ValueError(f"{file}: optimizer group {i} differs from the checkpoint's "
                             "(another model, layer-decay policy or weight decay?)"
                             + (f": {', '.join(diff)}" if diff else ""))
