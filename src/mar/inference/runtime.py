"""Other runtimes for the one model call: ONNX Runtime and OpenVINO, fp32 or int8.

:func:`runtime_model` turns a loaded model and its test-time masking into an object
:func:`mar.inference.score` runs like the model itself (``grid``, ``classify``,
``device``). The masked graph is :func:`mar.inference.export.export_onnx`'s: the
evaluation mask is a constant in it, so it has a fixed visible-token count and a dynamic
batch. ``classify`` refuses any other mask.

The exported (and, with ``int8``, quantised) file is cached beside the weights, in
``.mar-runtime/`` (or the user's cache folder, ``$XDG_CACHE_HOME/mar/runtime``, where that
folder is not writable), under a
key of everything it depends on: the weights file (path, size, modification time), the
visible tokens, int8, the ONNX opset and the versions of mar, torch, onnx and the
runtime. A second start loads it at once; a file that does not load is rebuilt, with a
note. ``--int8`` is ONNX Runtime's dynamic quantisation (``quantize_dynamic``) of the
matrix products with constant weights: weights int8 per output channel (7-bit on CPUs
without VNNI, :func:`reduce_range`), activations quantised at run time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..masking import Mask, MaskingStrategy

RUNTIMES = ("torch", "onnxruntime", "openvino")
EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
OPSET = 18


def _need(module: str, runtime: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--runtime {runtime} needs {module}, which is not installed: "
                          f"pip install 'mar-video[{EXTRA[runtime]}]'") from None


class RuntimeModel:
    """A compiled masked classifier: ``classify(video, mask)`` for the mask it was
    exported with, on the CPU, float32 in and out."""

    device = torch.device("cpu")

    def __init__(self, run, grid, ids_keep: Tensor, name: str, path: Path):
        self._run, self.grid, self.ids_keep = run, tuple(grid), ids_keep
        self.name, self.path = name, path

    def classify(self, video: Tensor, mask: Mask) -> Tensor:
        keep = mask.ids_keep.cpu()
        if keep.shape[1] != self.ids_keep.numel() or not bool(
                (keep == self.ids_keep).all()):
            raise ValueError(f"{self.name}: the graph holds its own test-time mask "
                             f"({self.ids_keep.numel()} visible tokens); it cannot run "
                             "another")
        return torch.from_numpy(self._run(video.float().cpu().contiguous().numpy()))

    def eval(self):
        return self

    def describe(self) -> str:
        return f"runtime: {self.name} ({self.path})"


def reduce_range() -> bool:
    """7-bit int8 weights on CPUs without VNNI: their u8 x s8 multiply-add sums pairs in
    int16 and saturates with full-range weights (a trained tiny model lost 7 points of
    top-1 that way on an AVX2 machine; with 7 bits it lost none, tests/test_engine_train.py)."""
    from ..runtime.device import cpu_flags

    return not (cpu_flags() or set()) & {"avx512_vnni", "avx_vnni", "amx_int8"}


def cache_key(weights: Path, ids_keep: Tensor, runtime: str, int8: bool) -> str:
    """Everything the compiled file depends on, hashed."""
    from .. import __version__

    stat = weights.stat()
    versions = {m: getattr(importlib.import_module(m), "__version__", "?")
                for m in ("torch", "onnx", runtime)}
    what = {"weights": [str(weights.resolve()), stat.st_size, stat.st_mtime_ns],
            "visible": hashlib.sha1(ids_keep.numpy().tobytes()).hexdigest(),
            "int8": int8 and {"reduce_range": reduce_range()}, "opset": OPSET,
            "mar": __version__, "versions": versions}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def cache_dir(weights: Path) -> Path:
    """``.mar-runtime`` beside the weights, or the user's cache where that is read-only."""
    import os

    folder = weights.parent / ".mar-runtime"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mar" / "runtime"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _build(model, masking: MaskingStrategy, path: Path, int8: bool) -> None:
    """Export (and quantise) into ``path``, atomically."""
    from .. import atomic
    from .export import export_onnx

    def write(tmp: Path) -> None:
        fp32 = tmp.with_name(tmp.name + ".fp32.onnx")
        export_onnx(model.eval(), masking, fp32, opset=OPSET)
        if not int8:
            fp32.replace(tmp)
            return
        quantization = _need("onnxruntime.quantization", "onnxruntime")
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:  # shapes inferred and the graph simplified first, as ONNX Runtime advises
            quantization.quant_pre_process(str(fp32), str(prepared))
            quantization.quantize_dynamic(
                str(prepared), str(tmp), per_channel=True, reduce_range=reduce_range(),
                weight_type=quantization.QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True})
        finally:
            fp32.unlink(missing_ok=True)
            prepared.unlink(missing_ok=True)

    atomic.write_file(path, write)


def _session(runtime: str, path: Path, threads: int | None):
    """A callable (B, C, T, H, W) float32 array -> logits array."""
    if runtime == "onnxruntime":
        ort = _need("onnxruntime", runtime)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda video: session.run(None, {"video": video})[0]
    ov = _need("openvino", runtime)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = core.compile_model(str(path), "CPU", config)
    return lambda video: compiled(video)[0]


def check_runtime(runtime: str, int8: bool = False, amp: str | None = "none") -> None:
    """A one-line :class:`ConfigError` for a runtime this machine lacks or a combination
    it cannot run; nothing is built."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        if int8:
            raise ConfigError("--int8 runs on --runtime onnxruntime (ONNX Runtime's dynamic "
                              "quantisation); the torch runtime has no int8 path yet")
        return
    if int8 and runtime == "openvino":
        raise ConfigError("--int8 runs on --runtime onnxruntime; OpenVINO's int8 (NNCF) is "
                          "not built yet")
    if amp not in (None, "none"):
        raise ConfigError(f"--amp {amp}: --runtime {runtime} runs float32 (or --int8)")
    _need("onnx", runtime)
    _need(runtime, runtime)


def runtime_model(model, masking: MaskingStrategy, weights: str | Path, runtime: str = "torch",
                  *, int8: bool = False, amp: str | None = "none",
                  threads: int | None = None):
    """``model`` itself for ``runtime="torch"``; otherwise its masked classifier compiled
    for ONNX Runtime or OpenVINO (:class:`RuntimeModel`), from the cache when it is
    there. ``weights`` is what the model was loaded from (it keys the cache)."""
    from ..models.io import weights_file
    from ..runtime.device import model_device

    check_runtime(runtime, int8, amp)
    if runtime == "torch":
        return model
    if model_device(model).type != "cpu":
        raise ConfigError(f"--runtime {runtime} runs on the CPU: pass --device cpu (or "
                          "--runtime torch for the GPU)")
    file = weights_file(weights)
    ids_keep = masking(1, model.grid, train=False).ids_keep[0].cpu()
    key = cache_key(file, ids_keep, runtime, int8)
    path = cache_dir(file) / f"{key}{'-int8' if int8 else ''}.onnx"
    name = f"{runtime}{' int8' if int8 else ''}"
    if path.is_file():
        try:
            return RuntimeModel(_session(runtime, path, threads), model.grid, ids_keep, name,
                                path)
        except Exception as e:  # a damaged or foreign file: never used, rebuilt
            print(f"note: {path} does not load ({str(e).splitlines()[0][:120]}); "
                  "rebuilding it", file=sys.stderr)
            path.unlink(missing_ok=True)
    _build(model, masking, path, int8)
    return RuntimeModel(_session(runtime, path, threads), model.grid, ids_keep, name, path)
