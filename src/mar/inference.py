"""Using a trained model: load it with its settings, predict on video files, export ONNX."""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, build_config, load_config
from .data.prepare import VIDEO_EXTENSIONS
from .masking import Mask, MaskingStrategy, make_masking
from .models import MAR
from .models.io import empty_model, has_decoder, load_weights, read_model_dir, weights_file


def load_run(path: str | Path, config: str | Path | None = None,
             overrides: list[str] = ()) -> tuple[MAR, Config]:
    """A model (eval mode) and its config from a training run (its ``best/``, else its
    newest checkpoint), a checkpoint, or a mar model directory: the one loader of
    ``mar eval``, ``predict``, ``export`` and ``visualize``.

    The config is ``config`` if given; else the checkpoint's own (``state.pt``, then the
    run's ``config.yaml``); else the model directory's ``config.json`` with the test-time
    masking of its ``masking.json``; else, for bare weights, the defaults. The
    ``key.path=value`` overrides come last. The model
    gets a reconstruction decoder exactly when the weights hold one (training adds it
    whenever lambda > 0), no classifier when it is a pretraining run's, and the weights
    load strictly.
    """
    file = weights_file(path)
    folder = file.parent
    if config is not None:
        cfg = load_config(config, overrides)
    elif (folder / "state.pt").is_file() and "config" in (
            state := torch.load(folder / "state.pt", weights_only=True)):
        cfg = build_config(state["config"], overrides, f"{folder / 'state.pt'}")
    elif (folder.parent / "config.yaml").is_file():
        cfg = load_config(folder.parent / "config.yaml", overrides)
    elif (folder / "config.json").is_file():
        cfg = build_config(model_dir_tree(folder), overrides, str(folder))
    elif overrides:
        cfg = load_config(None, overrides)
    else:
        raise ConfigError(f"{path}: no config found beside the weights; pass --config "
                          "or key=value settings")
    model_cfg = cfg.model.model_copy(update={"decoder": has_decoder(file)} | (
        {"head": "none"} if cfg.train.task == "pretrain" else {}))  # as training built it
    model = empty_model(model_cfg.build)
    load_weights(model, file)
    return model.eval(), cfg.model_copy(update={"model": model_cfg})


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


def describe_masking(masking: MaskingStrategy, grid: tuple[int, int, int]) -> str:
    """One line naming the test-time masking and the tokens it keeps."""
    mask = masking(1, grid, train=False)
    what = "none" if mask.num_masked == 0 else f"{masking.name} {masking.ratio:.0%}"
    return (f"test-time masking: {what} ({mask.num_visible} of {mask.num_tokens} tokens "
            "visible)")


def find_videos(items: list[str]) -> list[Path]:
    """Video files named directly, and every video inside the named folders (sorted)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"no video files in {', '.join(items)}")
    return out


@dataclass
class Prediction:
    path: str
    classes: list[int]
    probs: list[float]
    views: int
    error: str | None = None


@dataclass
class Profile:
    """Seconds per stage of :func:`predict`. ``open``, ``decode`` and ``transform`` are
    summed over videos (in the loader workers, so they overlap the model when
    ``workers > 0``); ``model`` and ``wall`` are the main process's."""

    open: float = 0.0
    decode: float = 0.0
    transform: float = 0.0
    model: float = 0.0
    wall: float = 0.0
    videos: int = 0
    views: int = 0

    def add(self, timing: dict) -> None:
        for key in ("open", "decode", "transform"):
            setattr(self, key, getattr(self, key) + timing[key])


def default_workers(videos: int) -> int:
    """Loader workers that overlap decoding with the model: none for one video (a
    worker's start-up would cost more), else up to 4 and one per spare core."""
    return 0 if videos <= 1 else max(1, min(4, (os.cpu_count() or 2) - 1))


def cpu_bf16_instructions() -> list[str] | None:
    """This CPU's native bf16 instruction sets, as Linux lists them (x86: AVX-512 BF16,
    AMX; Arm: BF16), or None where they cannot be read. Without them oneDNN converts
    bf16 in software, which is slower than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_note(name: str, device: torch.device) -> str | None:
    """A line for the user when ``--dtype bf16`` will be slower than fp32 here."""
    if name != "bf16" or device.type != "cpu" or cpu_bf16_instructions() != []:
        return None
    return ("note: this CPU has no bf16 instructions (AVX-512 BF16 or AMX): bf16 is "
            "emulated and slower than fp32 here (about 3x for ViT-B, docs/benchmarks.md)")


def default_views_per_call(device: torch.device) -> int:
    """Views per model call: 4 on a CPU, where larger calls outgrow the caches (ViT-B:
    8 views per call 8-12 % slower than 1 to 4, docs/benchmarks.md), 16 on a GPU."""
    return 4 if device.type == "cpu" else 16


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``--dtype``: fp32 (None) or bf16 autocast (CUDA, or a CPU with bf16 support)."""
    if name == "fp32":
        return None
    if name != "bf16":
        raise ValueError(f"--dtype {name!r}: expected fp32 or bf16")
    if device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ValueError("--dtype bf16: this CPU build has no bf16 kernels (oneDNN)")
    return torch.bfloat16


@torch.no_grad()
def predict(model: MAR, cfg: Config, videos: list[Path], masking: MaskingStrategy,
            topk: int = 5, batch_size: int | None = None, workers: int | None = None,
            dtype: str = "fp32", profile: Profile | None = None) -> list[Prediction]:
    """Softmax averaged over the config's test views (clips x crops) of each video.

    Each video is decoded once, scaled by the decoder (:class:`mar.data.VideoViews`);
    ``workers`` loader processes decode the next videos while the model runs on the
    views of one or more videos, in calls of at most ``batch_size`` views (default:
    :func:`default_views_per_call`)."""
    from .data import VideoRecord, collate_views

    start = time.perf_counter()
    dc = cfg.data
    device = next(model.parameters()).device
    batch_size = batch_size or default_views_per_call(device)
    dataset = cfg.views_dataset([VideoRecord(str(v), 0) for v in videos], dc.test_clips,
                                dc.test_crops)
    per_batch = max(1, batch_size // len(dataset.views))
    workers = default_workers(len(videos)) if workers is None else workers
    loader = torch.utils.data.DataLoader(dataset, per_batch, collate_fn=collate_views,
                                         num_workers=workers)
    amp = autocast_dtype(dtype, device)
    probs: dict[int, Tensor] = {}
    errors: dict[int, str] = {}
    views: dict[int, int] = {}
    for batch in loader:
        errors |= batch["error"]
        tick = time.perf_counter()
        logits = []
        for chunk in batch["video"].split(batch_size):
            chunk = chunk.to(device)
            mask = masking(chunk.shape[0], model.grid, train=False).to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits.append(model.forward_head(model.forward_features(chunk, mask), mask))
        p = torch.cat(logits).float().softmax(-1).cpu()
        if profile is not None:
            profile.model += time.perf_counter() - tick
            for timing in batch["timing"]:
                profile.add(timing)
        for i, ok in batch["valid"].items():
            if ok:
                rows = batch["index"] == i
                probs[i], views[i] = p[rows].mean(0), int(rows.sum())
    out = []
    for i, v in enumerate(videos):
        if i not in probs:
            out.append(Prediction(str(v), [], [], 0, errors.get(i, "could not be decoded")))
            continue
        top = probs[i].topk(min(topk, cfg.model.num_classes))
        out.append(Prediction(str(v), top.indices.tolist(), top.values.tolist(), views[i]))
    if profile is not None:
        profile.wall += time.perf_counter() - start
        profile.videos += len(videos)
        profile.views += sum(views.values())
    return out


def eval_masking(cfg: Config, ratio: float | None) -> MaskingStrategy:
    """``--mask-ratio``: cell running at that ratio; otherwise the config's test mask."""
    return make_masking("cell_running", ratio) if ratio is not None else cfg.test_masking()


class MaskedClassifier(nn.Module):
    """The deploy path with its evaluation mask built in: (B, C, T, H, W) -> (B, K).

    The visible-token indices are a constant (the deterministic evaluation mask, the
    same for every clip), so the exported graph has a fixed visible count and a dynamic
    batch dimension.
    """

    def __init__(self, model: MAR, mask: Mask):
        super().__init__()
        self.model = model
        self.register_buffer("ids_keep", mask.ids_keep[:1].clone())
        self.register_buffer("ids_mask", mask.ids_mask[:1].clone())

    def forward(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        mask = Mask(self.ids_keep.expand(b, -1), self.ids_mask.expand(b, -1), self.model.grid)
        return self.model.forward_head(self.model.forward_features(video, mask), mask)


def export_onnx(model: MAR, masking: MaskingStrategy, path: str | Path,
                opset: int = 18) -> Path:
    """Write the masked inference path as ONNX with input ``video`` (batch dynamic) and
    output ``logits``."""
    path = Path(path)
    mask = masking(1, model.grid, train=False)
    wrapper = MaskedClassifier(model.eval(), mask).eval()
    pe = model.encoder.patch_embed
    t, h, w = model.grid
    example = torch.zeros(2, pe.proj.in_channels, t * pe.tubelet_size, h * pe.patch_size,
                          w * pe.patch_size)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-derived Python ints
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=["video"],
                          output_names=["logits"], opset_version=opset,
                          dynamic_axes={"video": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    tmp.replace(path)
    return path
