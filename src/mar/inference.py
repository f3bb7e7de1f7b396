"""Using a trained model: load it with its settings, predict on video files, export ONNX."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, load_config
from .data.prepare import VIDEO_EXTENSIONS
from .engine.weights import load_weights, weights_file
from .masking import Mask, MaskingStrategy, make_masking
from .models import MAR


def load_run(path: str | Path, config: str | Path | None = None,
             overrides: list[str] = ()) -> tuple[MAR, Config]:
    """A model and its config from a training checkpoint, a run's ``best/``, or a
    converted model directory (``config.json`` with the ``create_model`` arguments).

    The config is, in order: ``config`` if given; the checkpoint's own ``state.pt``;
    ``config.yaml`` of the run directory; ``config.json`` of a model directory; then the
    ``key.path=value`` overrides.
    """
    path = Path(path)
    file = weights_file(path)
    folder = file.parent
    if config is not None:
        cfg = load_config(config)
    elif (folder / "state.pt").is_file() and "config" in (
            state := torch.load(folder / "state.pt", weights_only=True)):
        cfg = Config.model_validate(state["config"])
    elif (folder.parent / "config.yaml").is_file():
        cfg = load_config(folder.parent / "config.yaml")
    elif (folder / "config.json").is_file():
        kwargs = json.loads((folder / "config.json").read_text())
        model_kwargs = {k: v for k, v in kwargs.items() if k != "name"}
        cfg = load_config(None, [
            f"model.name={kwargs.get('name', 'vit_base')}",
            *(f"model.{k}={json.dumps(v)}" for k, v in model_kwargs.items()),
            f"data.num_frames={kwargs.get('num_frames', 16)}",
            f"data.crop_size={kwargs.get('img_size', 224)}"])
    else:
        raise ConfigError(f"{path}: no config found beside the weights; pass --config")
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        has_decoder = any(k.startswith("decoder.") for k in f.keys())  # noqa: SIM118
    if overrides:
        tree = cfg.model_dump(mode="json")
        cfg = load_config(None, [*_flatten(tree), *overrides])
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"decoder": has_decoder})})
    model = cfg.model.build()
    load_weights(model, file)
    return model.eval(), cfg


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


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


@torch.no_grad()
def predict(model: MAR, cfg: Config, videos: list[Path], masking: MaskingStrategy,
            topk: int = 5, batch_size: int = 8) -> list[Prediction]:
    """Softmax averaged over the config's test views (clips x crops) of each video."""
    from .data import ClipSampling, EvalTransform, VideoDataset, VideoRecord, collate

    dc = cfg.data
    dataset = VideoDataset(
        [VideoRecord(str(v), 0) for v in videos], train=False,
        sampling=ClipSampling(dc.sampling, dc.num_frames, dc.stride, dc.segment_test_style),
        eval_transform=EvalTransform(dc.crop_size, dc.test_crops, dc.short_side,
                                     cfg.model.pixel_mean, cfg.model.pixel_std),
        num_clips=dc.test_clips, backend=dc.backend, decode_timeout=dc.decode_timeout)
    device = next(model.parameters()).device
    sums = torch.zeros(len(videos), cfg.model.num_classes)
    counts = torch.zeros(len(videos))
    errors: dict[int, str] = {}
    loader = torch.utils.data.DataLoader(dataset, batch_size, collate_fn=collate)
    for batch in loader:
        video = batch["video"].to(device)
        mask = masking(video.shape[0], model.grid, train=False).to(device)
        probs = model.forward_head(model.forward_features(video, mask), mask).softmax(-1).cpu()
        for p, i, ok in zip(probs, batch["index"].tolist(), batch["valid"].tolist(),
                            strict=True):
            if ok:
                sums[i] += p
                counts[i] += 1
            else:
                errors[i] = "could not be decoded"
    out = []
    for i, v in enumerate(videos):
        if counts[i] == 0:
            out.append(Prediction(str(v), [], [], 0, errors.get(i, "no views")))
            continue
        top = (sums[i] / counts[i]).topk(min(topk, cfg.model.num_classes))
        out.append(Prediction(str(v), top.indices.tolist(), top.values.tolist(),
                              int(counts[i])))
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
