"""What a checkpoint format is: its rename rules, an optional adapt step and the test-time
masking its models were evaluated with; and the hints about an architecture that the
tensors' shapes do not say. The formats themselves are the modules beside this one
(:mod:`.videomae`, :mod:`.hf`, :mod:`.image_mae`, :mod:`.official_mar`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor

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
