"""The supported checkpoint layouts and how to tell them apart.

Each format module holds its rename table as data (see :mod:`.rules`) and, where the
tensors need more than a rename, an ``adapt`` step; each is a :class:`.spec.Format`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from . import hf, image_mae, official_mar, videomae
from .report import ConversionError
from .spec import Format, Hints

__all__ = ["FORMATS", "Format", "Hints", "detect_format", "get_format"]


FORMATS = {f.name: f for f in (videomae.FORMAT, hf.FORMAT, image_mae.FORMAT,
                                official_mar.FORMAT)}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ConversionError(f"unknown format {name!r}; known: auto, {', '.join(FORMATS)}")
    return FORMATS[name]


def detect_format(state: Mapping[str, Tensor], config: dict | None = None) -> str:
    """``hf``, ``mar`` (official MAR), ``videomae`` (3-D patch embedding) or ``mae``
    (2-D patch embedding), from the keys; a transformers config.json decides alone."""
    if config is not None and config.get("model_type") == "videomae":
        return "hf"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
        return "hf"
    if "backbone.patch_embed.proj.weight" in state:
        return "mar"
    if any(k.startswith(("head.head.", "head.proj.", "head.fc_norm.", "decoder.proj."))
           for k in state):
        raise ConversionError("these weights are already in mar's own format: load the model "
                              "directory with mar.load_model")
    for key in ("encoder.patch_embed.proj.weight", "patch_embed.proj.weight"):
        if key in state:
            return "videomae" if state[key].ndim == 5 else "mae"
    first = ", ".join(list(state)[:4])
    raise ConversionError("unknown checkpoint layout: expected VideoMAE (patch_embed.proj), "
                          "transformers (embeddings.patch_embeddings), image ViT/MAE or "
                          f"official MAR (backbone.) keys; the file starts with {first}")
