"""The supported checkpoint layouts and how to tell them apart.

Each format module holds its rename table as data (see :mod:`.rules`) and, where the
tensors need more than a rename, an ``adapt`` step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor

from .report import ConversionError
from .rules import Mapped, Rule


@dataclass
class Hints:
    """What is known about the architecture beyond the tensors' shapes."""

    config: dict | None = None        # a transformers config.json, when there is one
    tubelet_size: int = 2             # for inflating 2-D image weights
    num_heads: int | None = None
    decoder_heads: int | None = None
    num_frames: int | None = None
    img_size: int | None = None
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    head_problem: str | None = None   # why the file's classifier cannot be used as is
    notes: list[str] = field(default_factory=list)
    notes_if_loaded: dict[str, str] = field(default_factory=dict)  # our key -> note


FULL_TOKENS = {"name": "none", "ratio": 0.0}
FULL_TOKENS_REASON = ("the source model was trained and tested on all tokens; run on a "
                      "subset it would lose accuracy silently")


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    rules: list[Rule]
    strip: tuple[str, ...] = ()
    # after renaming: fixes tensors in place, fills hints from the file (mapped, hints, file state)
    adapt: Callable[[Mapped, Hints, Mapping[str, Tensor]], None] | None = None
    # the test-time masking the source's models were evaluated with (masking.json), and why
    masking: dict = field(default_factory=lambda: dict(FULL_TOKENS))
    masking_reason: str = FULL_TOKENS_REASON


def _formats() -> dict[str, Format]:
    from . import hf, image_mae, official_mar, videomae

    return {f.name: f for f in (videomae.FORMAT, hf.FORMAT, image_mae.FORMAT,
                                official_mar.FORMAT)}


def get_format(name: str) -> Format:
    formats = _formats()
    if name not in formats:
        raise ConversionError(f"unknown format {name!r}; known: auto, {', '.join(formats)}")
    return formats[name]




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
