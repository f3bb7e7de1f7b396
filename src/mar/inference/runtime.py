"""Other runtimes for the one model call: ONNX Runtime and OpenVINO, fp32 or int8.

:func:`runtime_model` turns a loaded model and its test-time masking into an object
:func:`mar.inference.score` runs like the model itself (``grid``, ``classify``,
``device``). The masked graph is :func:`mar.inference.export.export_onnx`'s: the
evaluation mask is a constant in it, so it has a fixed visible-token count and a dynamic
batch. ``classify`` refuses any other mask.

The exported (and, with ``int8``, quantised) file is cached beside the weights, in
``.mar-runtime/`` (or the user's cache folder, ``$XDG_CACHE_HOME/mar/runtime``, where that
folder is not writable), under a key of everything it depends on: the weights file
(path, size, modification time), the visible tokens, int8, the ONNX opset and the
versions of mar, torch and onnx (and, for int8, of the runtime that quantised it). Both
runtimes read the one float32 file. A second start loads it at once; a file that does
not load is rebuilt, with a note.

``--int8``, the best candidate measured per runtime (docs/deploy.md):

- ONNX Runtime: its dynamic quantisation (``quantize_dynamic``) of the matrix products
  with constant weights: weights int8 per output channel (7-bit on CPUs without VNNI,
  :func:`reduce_range`), activations quantised at run time.
- OpenVINO: NNCF's weight compression (``nncf.compress_weights``, int8 asymmetric per
  output channel), which needs no calibration clips; the CPU plugin runs the products in
  float32 from int8 weights, or quantises activations at run time where it can. NNCF's
  full post-training quantisation (``nncf.quantize``, ``ModelType.TRANSFORMER``) needs
  calibration clips that ``mar predict`` does not have, and measured no faster.
- torch: torchao's ``Int8DynamicActivationInt8WeightConfig`` on a copy of the model
  (:class:`TorchInt8`; weights int8 per output channel, activations per token at run
  time), on CPUs with VNNI or AMX. Without them its int8 matmul (``torch._int_mm``) has
  no fast kernel: 40x slower than float32 on an AVX2 CPU, so it is refused there with
  that reason.

``--runtime auto`` (:mod:`mar.inference.auto`) chooses among the installed runtimes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..masking import Mask, MaskingStrategy

RUNTIMES = ("torch", "onnxruntime", "openvino")
CHOICES = ("auto", *RUNTIMES)                          # what --runtime takes
EXTRA = {"onnxruntime": "onnx", "openvino": "openvino", "torch": "torchao"}
OPSET = 18
# how --int8 quantises on each runtime (part of the cache key)
INT8 = {"onnxruntime": "quantize_dynamic", "openvino": "nncf.compress_weights int8_asym"}
NO_INT8 = ("--int8 needs ONNX Runtime or OpenVINO (or torchao on a CPU with VNNI or AMX), "
           "and none is installed: pip install 'mar-video[onnx]'")
TORCH_INT8 = ("--runtime torch --int8 needs a CPU with VNNI or AMX: without them torchao's "
              "int8 measured 40x slower than float32 (docs/deploy.md); use --runtime "
              "onnxruntime or openvino")


@contextlib.contextmanager
def _quiet_torch_logs():
    """NNCF's and torchao's imports make torch log notes that are not about this run (no
    CUDA runtime found on a CPU machine; a deprecated pytree registration): held back."""
    loggers = [logging.getLogger(f"torch.utils.{n}") for n in ("cpp_extension", "_pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@functools.cache
def _openvino_core():
    """One OpenVINO ``Core`` for the process, never released. Its CPU plugin swaps the
    compiling thread's signal stack for one of its own and unmaps that when the plugin is
    released; released from another thread (a garbage collection there), the first
    thread was left with an unmapped signal stack, and the next signal it handled (a
    subprocess's exit, under torch's DataLoader SIGCHLD handler) killed the process
    without a traceback (tests/test_runtime.py)."""
    return _need("openvino", "openvino").Core()


def _need(module: str, runtime: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--runtime {runtime} needs {module}, which is not installed: "
                          f"pip install 'mar-video[{EXTRA[runtime]}]'") from None


class RuntimeModel:
    """A compiled masked classifier: ``classify(video, mask)`` for the mask it was
    exported with, on the CPU, float32 in and out. ``session`` is the runtime's own
    object (an ONNX Runtime ``InferenceSession``, an OpenVINO ``CompiledModel``)."""

    device = torch.device("cpu")

    def __init__(self, session, grid, ids_keep: Tensor, name: str, path: Path):
        self.session, self.grid, self.ids_keep = session, tuple(grid), ids_keep
        self.name, self.path = name, path
        if name.startswith("onnxruntime"):
            self._run = lambda video: session.run(None, {"video": video})[0]
        else:
            self._run = lambda video: session(video)[0]

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


class TorchInt8:
    """torchao's dynamic int8 (``Int8DynamicActivationInt8WeightConfig``) in every linear
    layer of a copy of ``model``, on the CPU: runs like the model (``grid``,
    ``classify``), for any mask."""

    device = torch.device("cpu")
    name = "torch int8"

    def __init__(self, model):
        import copy

        with _quiet_torch_logs():
            ao = _need("torchao.quantization", "torch")
            self.model = copy.deepcopy(model).eval()
            ao.quantize_(self.model, ao.Int8DynamicActivationInt8WeightConfig())
        self.grid = model.grid

    def classify(self, video: Tensor, mask: Mask) -> Tensor:
        return self.model.classify(video, mask)

    def eval(self):
        return self

    def describe(self) -> str:
        return "runtime: torch int8 (torchao Int8DynamicActivationInt8WeightConfig)"


def int8_dot() -> bool:
    """The CPU multiplies int8 pairs into int32 in one instruction (VNNI or AMX)."""
    from ..runtime.device import cpu_flags

    return bool((cpu_flags() or set()) & {"avx512_vnni", "avx_vnni", "amx_int8"})


def reduce_range() -> bool:
    """7-bit int8 weights on CPUs without VNNI: their u8 x s8 multiply-add sums pairs in
    int16 and saturates with full-range weights (a trained tiny model lost 7 points of
    top-1 that way on an AVX2 machine; with 7 bits it lost none, tests/test_engine_train.py)."""
    return not int8_dot()


def int8_method(runtime: str) -> dict:
    """How ``--int8`` quantises on ``runtime`` (what its file depends on)."""
    if runtime == "onnxruntime":
        return {"method": INT8[runtime], "reduce_range": reduce_range()}
    return {"method": INT8[runtime]}


def cache_key(weights: Path, ids_keep: Tensor, runtime: str, int8: bool) -> str:
    """Everything the compiled file depends on, hashed."""
    from .. import __version__

    stat = weights.stat()
    # the float32 file is the export alone, one for both runtimes; int8's is the runtime's
    modules = ("torch", "onnx", *((runtime, *(("nncf",) if runtime == "openvino" else ()))
                                  if int8 else ()))
    versions = {m: _version(m) for m in modules}
    what = {"weights": [str(weights.resolve()), stat.st_size, stat.st_mtime_ns],
            "visible": hashlib.sha1(ids_keep.numpy().tobytes()).hexdigest(),
            "int8": int8 and int8_method(runtime), "opset": OPSET,
            "mar": __version__, "versions": versions}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def _version(module: str) -> str:
    """A module's version, without importing it where its distribution says."""
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu's onnxruntime
        return getattr(importlib.import_module(module), "__version__", "?")


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


def _build(model, masking: MaskingStrategy, path: Path, runtime: str, int8: bool) -> None:
    """Export (and quantise) into ``path``, atomically."""
    from .. import atomic
    from .export import export_onnx

    if int8 and runtime == "openvino":
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
            fp32 = export_onnx(model.eval(), masking, Path(tmp) / "fp32.onnx", opset=OPSET)
            _compress_openvino(fp32, path)
        return

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


def _compress_openvino(onnx_file: Path, path: Path) -> None:
    """NNCF's int8 weight compression of ``onnx_file``, saved as OpenVINO IR at ``path``
    (``.xml``, its weights in the ``.bin`` beside it: the ``.bin`` is renamed into place
    first, so a reader never finds an ``.xml`` without its weights)."""
    ov = _need("openvino", "openvino")
    # its progress bar: not on our stdout
    with _quiet_torch_logs(), contextlib.redirect_stdout(sys.stderr):
        nncf = _need("nncf", "openvino")
        nncf.set_log_level(logging.ERROR)
        compressed = nncf.compress_weights(_openvino_core().read_model(str(onnx_file)),
                                           mode=nncf.CompressWeightsMode.INT8_ASYM)
    tmp = onnx_file.with_name("int8.xml")
    ov.save_model(compressed, str(tmp), compress_to_fp16=False)  # float32 stays float32
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
    tmp.replace(path)


def _session(runtime: str, path: Path, threads: int | None):
    """ONNX Runtime's session or OpenVINO's compiled model of the file at ``path``."""
    if runtime == "onnxruntime":
        ort = _need("onnxruntime", runtime)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # float32: the CPU plugin otherwise computes in bfloat16 on CPUs with AVX512_BF16 or
    # AMX (logits 1e-2 from torch's on an AMD EPYC with AVX512_BF16)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return _openvino_core().compile_model(str(path), "CPU", config)


def check_runtime(runtime: str, int8: bool = False, amp: str | None = "none") -> None:
    """A one-line :class:`ConfigError` for a runtime this machine lacks or a combination
    it cannot run; nothing is built."""
    if runtime not in CHOICES:
        raise ConfigError(f"runtime {runtime!r}: expected one of {', '.join(CHOICES)}")
    if int8 and amp not in (None, "none"):
        raise ConfigError(f"--amp {amp}: --int8 runs in float32 apart from the int8 "
                          "products")
    if runtime == "auto":
        if int8 and not installed(int8=True):
            raise ConfigError(NO_INT8)
        return
    if runtime == "torch":
        if int8:
            if not int8_dot():
                raise ConfigError(TORCH_INT8)
            if importlib.util.find_spec("torchao") is None:
                _need("torchao", runtime)       # the one-line error (imported when used)
        return
    if amp not in (None, "none"):
        raise ConfigError(f"--amp {amp}: --runtime {runtime} runs float32 (or --int8)")
    if importlib.util.find_spec("onnx") is None:   # the export's; imported when used
        _need("onnx", runtime)
    _need(runtime, runtime)
    if int8 and runtime == "openvino" and importlib.util.find_spec("nncf") is None:
        _need("nncf", runtime)                 # the one-line error (imported when used)


def runtime_device(device, runtime: str, int8: bool = False):
    """``--device``, where ``auto`` means the CPU for ONNX Runtime, OpenVINO and int8."""
    cpu_only = int8 or runtime not in ("torch", "auto")
    return "cpu" if cpu_only and str(device) == "auto" else device


def installed(int8: bool = False) -> list[str]:
    """The runtimes this machine can run (for ``int8``: those with an int8 path here), in
    :data:`RUNTIMES` order."""
    out = []
    for runtime in RUNTIMES:
        try:
            check_runtime(runtime, int8)
        except ConfigError:
            continue
        out.append(runtime)
    return out


def runtime_model(model, masking: MaskingStrategy, weights: str | Path, runtime: str = "auto",
                  *, int8: bool = False, amp: str | None = "none",
                  threads: int | None = None, views_per_call: int | None = None):
    """``model`` itself for ``runtime="torch"`` (with ``int8``: a quantised copy,
    :class:`TorchInt8`); otherwise its masked classifier compiled for ONNX Runtime or
    OpenVINO (:class:`RuntimeModel`), from the cache when it is there. ``weights`` is
    what the model was loaded from (it keys the cache).

    ``runtime="auto"`` (the default) is the fastest installed runtime at calls of
    ``views_per_call`` views (:func:`choose_runtime`, which says on
    stderr in one line what it chose)."""
    from ..models.io import weights_file
    from ..runtime.device import model_device

    check_runtime(runtime, int8, amp)
    if runtime == "auto":
        choice = choose_runtime(model, masking, weights, int8=int8, amp=amp,
                                views_per_call=views_per_call, threads=threads)
        print(choice.line(), file=sys.stderr)
        return choice.model
    if runtime == "torch" and not int8:
        return model
    if model_device(model).type != "cpu":
        raise ConfigError(f"--runtime {runtime}{' --int8' * int8} runs on the CPU: pass "
                          f"--device cpu{'' if int8 else ' (or --runtime torch for the GPU)'}")
    if runtime == "torch":
        return TorchInt8(model)
    file = weights_file(weights)
    ids_keep = masking(1, model.grid, train=False).ids_keep[0].cpu()
    key = cache_key(file, ids_keep, runtime, int8)
    suffix = ".xml" if int8 and runtime == "openvino" else ".onnx"   # OpenVINO IR
    path = cache_dir(file) / f"{key}{'-int8' if int8 else ''}{suffix}"
    name = f"{runtime}{' int8' if int8 else ''}"
    if path.is_file():
        try:
            return RuntimeModel(_session(runtime, path, threads), model.grid, ids_keep, name,
                                path)
        except Exception as e:  # a damaged or foreign file: never used, rebuilt
            print(f"note: {path} does not load ({str(e).splitlines()[0][:120]}); "
                  "rebuilding it", file=sys.stderr)
            path.unlink(missing_ok=True)
    _build(model, masking, path, runtime, int8)
    return RuntimeModel(_session(runtime, path, threads), model.grid, ids_keep, name, path)


def choose_runtime(model, masking: MaskingStrategy, weights: str | Path, *,
                   int8: bool = False, amp: str | None = "none",
                   views_per_call: int | None = None, threads: int | None = None):
    """``--runtime auto``'s choice for ``model`` (a :class:`mar.inference.auto.Choice`,
    its runner built): the installed runtimes measured once at calls of
    ``views_per_call`` views, the record kept in the runtime cache of ``weights``."""
    from ..models.io import weights_file
    from .auto import choose

    return choose(model, masking, cache_dir(weights_file(weights)),
                  lambda r: runtime_model(model, masking, weights, r, int8=int8,
                                          threads=threads),
                  lambda: installed(int8), int8=int8, amp=amp,
                  views_per_call=views_per_call)
