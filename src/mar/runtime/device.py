"""Where and how a model runs: the one device choice (``--device``), the autocast dtype
(``--amp``) and the views per model call of every command."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (the GPU if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    A device this machine lacks is a :class:`~mar.errors.ConfigError`, never a silent
    run somewhere else."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this machine has no CUDA GPU (torch "
                          f"{torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {name!r}: this machine has {count} GPU"
                          f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    enable_tf32()
    return device


def enable_tf32() -> None:
    """float32 matmuls and convolutions on the GPU's TF32 tensor cores (10-bit mantissa
    products, float32 accumulation): what every fp32 path (``--amp none``) then runs on.
    Set whenever a command resolves a CUDA device; a no-op for CPU math."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def make_deterministic(device: torch.device) -> None:
    """``train.deterministic``: every op picks a deterministic kernel, or raises when it
    has none. On CUDA also what PyTorch requires for it: cuBLAS's fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``, before the first matmul), cuDNN without benchmarking,
    and attention without the flash kernel, whose backward has no deterministic form."""
    import os

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.enable_flash_sdp(False)
    torch.use_deterministic_algorithms(True)


def amp_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    """``--amp none|bf16|fp16`` (``train.amp``): the autocast dtype, None for fp32."""
    name = name or "none"
    if name not in AMP:
        raise ConfigError(f"amp {name!r}: expected one of {', '.join(AMP)}")
    if name == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ConfigError("amp 'bf16': this CPU build has no bf16 kernels (oneDNN)")
    return AMP[name]


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags as Linux lists them (``avx2``, ``avx512_vnni``, ...), or
    None where they cannot be read."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU's model name (what every timing in the docs names beside it)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_instructions() -> list[str] | None:
    """This CPU's native bf16 instruction sets, as Linux lists them (x86: AVX-512 BF16,
    AMX; Arm: BF16), or None where they cannot be read. Without them oneDNN converts
    bf16 in software, which is slower than fp32."""
    flags = cpu_flags()
    return None if flags is None else sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_note(amp: str | None, device: torch.device) -> str | None:
    """A line for the user when ``--amp bf16`` will be slower than fp32 here."""
    if amp != "bf16" or device.type != "cpu" or cpu_bf16_instructions() != []:
        return None
    return ("note: this CPU has no bf16 instructions (AVX-512 BF16 or AMX): bf16 is "
            "emulated and slower than fp32 here (about 3x for ViT-B, docs/benchmarks.md)")


def default_views_per_call(device: torch.device) -> int:
    """Views per model call: 4 on a CPU, where larger calls outgrow the caches (ViT-B:
    8 views per call 8-12 % slower than 1 to 4, docs/benchmarks.md), 16 on a GPU."""
    return 4 if device.type == "cpu" else 16


def to_device(x, device: torch.device):
    """``x`` (a tensor or a :class:`~mar.masking.Mask`) on ``device``. To a GPU it goes
    from page-locked memory (a loader's pinned batch is used as it is) with a
    ``non_blocking`` copy: the host never waits for it."""
    if device.type == "cuda":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def model_device(model) -> torch.device:
    """The device a model's parameters are on (a compiled runtime model says its own)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device
