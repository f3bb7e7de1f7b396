"""``--runtime auto``: the fastest runtime installed here, from a measurement recorded
once per machine and model shape.

:func:`choose` times each installed runtime (torch, ONNX Runtime, OpenVINO; with
``int8`` those with an int8 path) on the model's own shape: :data:`WARMUP` call, then
:data:`REPEATS` calls each, interleaved, of ``views_per_call`` random views through
:func:`mar.inference.score`, and takes the one with the lowest median. The result is
recorded as ``auto-<shape>.json`` in the runtime cache (:func:`~.runtime.cache_dir`,
beside the exports), where ``<shape>`` hashes the model's parameter shapes and token grid,
its visible tokens, the views per call and int8; inside it, the machine (CPU name, its
flags, torch's threads) and the versions of mar, torch, onnx, ONNX Runtime, OpenVINO
and NNCF. A record that matches is used without measuring; one that cannot be read or
was taken on another machine or with other versions is measured again, with a note.

Nothing is measured where only one answer is possible: a model on a GPU (the other
runtimes run on the CPU), autocast (``--amp bf16|fp16``: torch's), or no other runtime
installed: then it is torch (with ``int8``: the one runtime with an int8 path here).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from ..masking import MaskingStrategy

WARMUP, REPEATS = 1, 3
FORMAT = 2   # of the record; another is measured again (2: OpenVINO timed in float32)
MODULES = ("mar-video", "torch", "onnx", "onnxruntime", "openvino", "nncf", "torchao")


@dataclass
class Choice:
    """What auto chose (``runtime``, ``int8``), the runner it built (``model``: the
    model itself for torch), the median seconds per call of each runtime measured
    (none when nothing was measured: ``reason`` says why), when, and where it is kept."""

    runtime: str
    int8: bool
    model: object = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    views_per_call: int = 0
    measured: str = ""
    record: Path | None = None
    reason: str = ""

    def line(self) -> str:
        """One line: what auto chose, and from what."""
        name = self.runtime + (" int8" if self.int8 else "")
        if not self.seconds:
            return f"runtime auto: {name} ({self.reason})"
        mine = self.seconds[self.runtime]
        others = ", ".join(f"{r}{' int8' * self.int8} {s:.3g} s" for r, s in
                           self.seconds.items() if r != self.runtime)
        versus = (f"{self.seconds['torch'] / mine:.2f}x torch{' int8' * self.int8}, "
                  if "torch" in self.seconds
                  and self.runtime != "torch" else "")
        return (f"runtime auto: {name} ({versus}{mine:.3g} s per call of "
                f"{self.views_per_call} views; {others or 'nothing else installed'}; "
                f"measured {self.measured}, cached in {self.record})")


def choose(model, masking: MaskingStrategy, folder: Path, build, candidates, *,
           int8: bool = False, amp: str | None = "none",
           views_per_call: int | None = None) -> Choice:
    """The fastest of ``candidates()`` (runtime names) for ``model`` at calls of
    ``views_per_call`` views (default: :func:`~mar.runtime.device.default_views_per_call`),
    measured once and recorded in ``folder`` (module docstring); its runner built by
    ``build(runtime)`` (``Choice.model``). :func:`mar.inference.runtime.choose_runtime`
    wires these up."""
    from ..runtime.device import default_views_per_call, model_device

    device = model_device(model)
    if device.type != "cpu":
        if int8:
            raise ConfigError("--int8 runs on the CPU: pass --device cpu")
        return Choice("torch", False, model, reason=f"the model is on {device}; the other "
                      "runtimes run on the CPU")
    if amp not in (None, "none"):
        return Choice("torch", False, model, reason=f"--amp {amp} runs on torch")
    candidates = candidates()
    if not candidates:   # (mar.inference.runtime.check_runtime says which to install)
        raise ConfigError("--int8: no runtime installed here runs int8")
    if len(candidates) == 1:
        return Choice(candidates[0], int8, build(candidates[0]), reason=(
            "the only int8 runtime here" if int8 else "no other runtime installed: pip "
            "install 'mar-video[onnx]' or 'mar-video[openvino]'"))
    views_per_call = views_per_call or default_views_per_call(device)
    record = folder / f"auto-{_shape_key(model, masking, views_per_call, int8)}.json"
    context = _context(candidates)
    kept = _read(record, context)
    if kept is not None:
        return Choice(kept["runtime"], int8, build(kept["runtime"]), kept["seconds"],
                      views_per_call, kept["measured"], record)
    print(f"runtime auto: measuring {', '.join(r + ' int8' * int8 for r in candidates)} at "
          f"{views_per_call} views per call (once for this machine and model shape)",
          file=sys.stderr)
    runners = {r: build(r) for r in candidates}
    seconds = _measure(runners, masking, views_per_call, _view_shape(model))
    best = min(seconds, key=seconds.get)
    measured = datetime.date.today().isoformat()
    from .. import atomic

    atomic.write_text(record, json.dumps({"format": FORMAT, **context, "runtime": best,
                                          "seconds": seconds, "measured": measured},
                                         indent=1))
    return Choice(best, int8, runners[best], seconds, views_per_call, measured, record)


def _measure(runners: dict, masking: MaskingStrategy, views_per_call: int,
             view_shape: tuple[int, ...]) -> dict[str, float]:
    """Median seconds of a :func:`~mar.inference.score` call of ``views_per_call``
    random views, per runner: a warm-up, then the runners in turn (noise hits all)."""
    from .score import score

    views = torch.randn(views_per_call, *view_shape, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {r: [] for r in runners}
    for round_ in range(WARMUP + REPEATS):
        for name, runner in runners.items():
            start = time.perf_counter()
            score(runner, views, masking, views_per_call=views_per_call)
            if round_ >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {r: round(statistics.median(t), 6) for r, t in times.items()}


def _read(record: Path, context: dict) -> dict | None:
    """The record's choice when it was taken here, with these versions; else None (with
    a note when there was one to read)."""
    if not record.is_file():
        return None
    try:
        kept = json.loads(record.read_text())
        if kept.get("format") != FORMAT:
            raise ValueError(f"format {kept.get('format')!r}, not {FORMAT}")
        if kept["runtime"] not in kept["seconds"]:
            raise ValueError(f"no time for {kept['runtime']!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"note: {record} cannot be read ({str(e).splitlines()[0][:120]}); measuring "
              "again", file=sys.stderr)
        return None
    before = _flat({k: kept.get(k) for k in context})
    changed = [f"{key} {before.get(key)} -> {value}" for key, value in _flat(context).items()
               if before.get(key) != value]
    if changed:
        print(f"note: {record} was measured with other settings ({'; '.join(changed)}); "
              "measuring again", file=sys.stderr)
        return None
    return kept


def _flat(tree: dict, prefix: str = "") -> dict:
    """``{"versions": {"torch": "2.4"}}`` -> ``{"versions.torch": "2.4"}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _context(candidates: list[str]) -> dict:
    """What a measurement depends on besides the model's shape: the machine, the
    versions and the runtimes it compared."""
    from ..runtime.device import cpu_flags, cpu_name

    versions = {}
    for module in MODULES:
        try:
            versions[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            versions[module] = None
    flags = " ".join(sorted(cpu_flags() or ()))
    return {"cpu": cpu_name(), "cpu_flags": hashlib.sha1(flags.encode()).hexdigest()[:12],
            "threads": torch.get_num_threads(), "versions": versions,
            "candidates": candidates}


def _shape_key(model, masking: MaskingStrategy, views_per_call: int, int8: bool) -> str:
    """The model's architecture (its parameters' names and shapes, its token grid), the
    visible tokens, the views per call and int8, hashed."""
    ids_keep = masking(1, model.grid, train=False).ids_keep[0].cpu()
    what = {"parameters": [[k, list(v.shape)] for k, v in model.state_dict().items()],
            "grid": list(model.grid), "view": list(_view_shape(model)),
            "visible": hashlib.sha1(ids_keep.numpy().tobytes()).hexdigest(),
            "views_per_call": views_per_call, "int8": int8}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _view_shape(model) -> tuple[int, int, int, int]:
    """(C, T, H, W) of one view of ``model``."""
    pe = model.encoder.patch_embed
    t, h, w = model.grid
    return pe.proj.in_channels, t * pe.tubelet_size, h * pe.patch_size, w * pe.patch_size

