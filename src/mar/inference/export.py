"""``mar export``: the masked inference path as ONNX, its evaluation mask built in."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..masking import Mask, MaskingStrategy
from ..models import MAR


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
        return self.model.classify(video, mask)


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
                          w * pe.patch_size, device=next(model.parameters()).device)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-derived Python ints
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=["video"],
                          output_names=["logits"], opset_version=opset,
                          dynamic_axes={"video": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    tmp.replace(path)
    return path
