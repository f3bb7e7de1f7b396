"""Checkpoints: atomic, resumable, and loadable without executing code.

``DIR/checkpoint-<step:08d>/`` holds ``model.safetensors`` (the weights) and
``state.pt`` (step, epoch, optimizer, grad scaler, RNG states, config, metrics: tensors
and plain Python values only, so ``torch.load(..., weights_only=True)`` reads it). A
checkpoint is written into a temporary sibling directory, flushed to disk, then renamed
into place: a crash leaves the earlier checkpoints as they were and nothing half-written
that a resume would pick up.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .weights import load_weights

PREFIX = "checkpoint-"
TMP = ".tmp-"


def rng_state() -> dict:
    """This process's RNG states (torch, CUDA, NumPy, Python) as loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_dir(target: Path, writers: dict) -> None:
    """Write files into a temporary sibling, fsync, then rename it to ``target``."""
    tmp = target.with_name(f"{TMP}{target.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for name, write in writers.items():
            write(tmp / name)
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if target.exists():  # re-saving the same step after a resume
            old = target.with_name(f"{TMP}old-{target.name}-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, scaler, *, epoch: int,
                    sampler_epoch: int, config: dict, metrics: dict, keep_last: int = 3,
                    best_metric: float | None = None, higher_is_better: bool = True,
                    extra: dict | None = None) -> Path:
    """Write ``checkpoint-<step>``, keep the last ``keep_last``, and refresh ``best/``
    when ``best_metric`` beats the best so far."""
    run_dir = Path(run_dir)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = {"step": step, "epoch": epoch, "sampler_epoch": sampler_epoch,
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "config": config, "metrics": metrics, "rng": rng_state(), **(extra or {})}
    files = {"model.safetensors": lambda p: save_file(weights, str(p)),
             "state.pt": lambda p: torch.save(state, p)}
    path = run_dir / f"{PREFIX}{step:08d}"
    _write_dir(path, files)
    for old in _checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    if best_metric is not None:
        best_file = run_dir / "best" / "state.pt"
        previous = None
        if best_file.is_file():
            previous = torch.load(best_file, weights_only=True)["metrics"].get("best_metric")
        better = previous is None or (best_metric > previous if higher_is_better
                                      else best_metric < previous)
        if better:
            best_state = {"step": step, "epoch": epoch, "config": config,
                          "metrics": {**metrics, "best_metric": best_metric}}
            _write_dir(run_dir / "best", {
                "model.safetensors": lambda p: save_file(weights, str(p)),
                "state.pt": lambda p: torch.save(best_state, p)})
    return path


def _checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; temporary directories are not checkpoints."""
    found = [p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir()
             and (p / "model.safetensors").is_file() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (for ``--resume auto``); stale temporaries go."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    for stale in run_dir.glob(f"{TMP}*"):
        shutil.rmtree(stale, ignore_errors=True)
    found = _checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model, optimizer=None, scaler=None,
                    map_location="cpu") -> dict:
    """Load weights (strictly) and, if given, optimizer and scaler; return the state."""
    path = Path(path)
    load_weights(model, path)
    state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    return state


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Create the run directory; never reuse a non-empty one unless asked."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(f"{path} is not empty: pass --resume auto to continue "
                                  "that run or --overwrite to start afresh")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
