"""The model a state dict (under our names) was made for, read from its tensors' shapes.

Widths, depths, MLP widths, patch and tubelet sizes and class counts are in the shapes; the
number of attention heads is not (it only splits the width), so it comes from the caller
(``--num-heads``), else the file's config where there is one (transformers), else the
``SIZES`` entry of that width. Any shape converts: a model matching a ``SIZES`` entry keeps
its name, another is named ``custom`` and its config carries the explicit dims.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import Tensor

from ..models import SIZES
from .report import ConversionError
from .spec import Hints

CUSTOM = "custom"


@dataclass(frozen=True)
class Architecture:
    name: str                       # a SIZES entry, or CUSTOM (then the dims below are needed)
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    tubelet_size: int
    in_chans: int
    final_norm: bool
    head: str | None                # the file's classifier: "linear", "bridging" or None
    num_classes: int | None
    head_width: int | None
    head_depth: int | None
    head_heads: int | None
    decoder_dim: int | None         # None: the file has no decoder
    decoder_depth: int | None
    decoder_heads: int | None
    decoder_mlp_ratio: float | None

    def encoder_dims(self) -> dict:
        """The explicit ``create_model`` encoder arguments (needed for ``custom``)."""
        return {"embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio}


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """The ratio r with ``int(dim * r) == hidden``, as the blocks compute their MLP width
    (VideoMAE's rule); ``hidden / dim`` is bumped up by an ulp where it rounds down."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _mlp_hidden(dim: int, ratio: float) -> int:
    return int(dim * ratio)


def count_blocks(state: dict[str, Tensor], prefix: str) -> int:
    """How many ``{prefix}{i}.`` blocks there are; the indices must run 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m[1]) for k in state if (m := pattern.match(k))}
    if ids != set(range(len(ids))):
        raise ConversionError(f"{prefix}N: block indices {sorted(ids)} do not run from 0")
    return len(ids)


def _encoder_heads(dim: int, depth: int, hints: Hints, num_heads: int | None,
                   notes: list[str]) -> int:
    """The caller's ``num_heads``, else the file config's, else the size table's by width."""
    same = [(n, s) for n, s in SIZES.items() if (s.embed_dim, s.depth) == (dim, depth)]
    if num_heads is not None:
        if hints.num_heads is not None and hints.num_heads != num_heads:
            notes.append(f"{num_heads} attention heads as asked; the file's config gives "
                         f"{hints.num_heads}")
        return num_heads
    if hints.num_heads is not None:
        for name, size in same:
            if hints.num_heads != size.num_heads:
                raise ConversionError(
                    f"the file's config gives {hints.num_heads} attention heads for width "
                    f"{dim}, depth {depth}; mar's {name} has {size.num_heads}: pass "
                    "num_heads (--num-heads) to choose")
        return hints.num_heads
    by_width = [(n, s) for n, s in SIZES.items() if s.embed_dim == dim]
    if not by_width:
        known = ", ".join(f"{s.embed_dim} ({s.num_heads})" for s in SIZES.values())
        raise ConversionError(f"width {dim} matches no mar size and the number of attention "
                              f"heads is not stored in the weights: pass num_heads "
                              f"(--num-heads); known widths (heads): {known}")
    name, size = (same or by_width)[0]
    if not same:
        notes.append(f"{size.num_heads} attention heads, as mar's {name} of the same width "
                     "(the weights do not store it; --num-heads sets it)")
    return size.num_heads


def _size_name(dim: int, depth: int, heads: int, hidden: int | None) -> str:
    """The SIZES entry with exactly this encoder, else CUSTOM."""
    for name, size in SIZES.items():
        if ((size.embed_dim, size.depth, size.num_heads) == (dim, depth, heads)
                and hidden in (None, _mlp_hidden(dim, size.mlp_ratio))):
            return name
    return CUSTOM


def _decoder_heads(name: str, dim: int, hint: int | None) -> int:
    if hint is not None:
        return hint
    sizes = [SIZES[name]] if name in SIZES else []
    sizes += SIZES.values()                     # the encoder's own pairing first
    heads = next((s.decoder_heads for s in sizes if s.decoder_dim == dim), None)
    if heads is None:
        raise ConversionError(f"decoder width {dim} matches no VideoMAE decoder and its number "
                              "of heads is not stored in the weights: pass decoder_heads "
                              f"(--decoder-heads); known widths: "
                              f"{sorted({s.decoder_dim for s in SIZES.values()})}")
    return heads


def _ratio(state: dict[str, Tensor], key: str, dim: int) -> float:
    fc1 = state.get(key)
    return 4.0 if fc1 is None else mlp_ratio_for(dim, fc1.shape[0])


def infer_architecture(state: dict[str, Tensor], hints: Hints, *, num_heads: int | None = None,
                       decoder_heads: int | None = None) -> Architecture:
    """Read the model's dims from ``state`` (our key names). ``num_heads`` and
    ``decoder_heads``, when given, set the heads the weights cannot tell."""
    patch = state.get("encoder.patch_embed.proj.weight")
    if patch is None or patch.ndim != 5 or patch.shape[-1] != patch.shape[-2]:
        shape = None if patch is None else list(patch.shape)
        raise ConversionError(f"no usable patch embedding (encoder.patch_embed.proj.weight: "
                              f"{shape}; expected [D, C, t, p, p])")
    dim, in_chans, tubelet, patch_size = patch.shape[0], patch.shape[1], patch.shape[2], \
        patch.shape[-1]
    depth = count_blocks(state, "encoder.blocks.")
    heads = _encoder_heads(dim, depth, hints, num_heads, hints.notes)
    if dim % heads:
        raise ConversionError(f"width {dim} does not split into {heads} attention heads")
    fc1 = state.get("encoder.blocks.0.mlp.fc1.weight")
    mlp_ratio = _ratio(state, "encoder.blocks.0.mlp.fc1.weight", dim)
    name = _size_name(dim, depth, heads, None if fc1 is None else fc1.shape[0])
    size = SIZES.get(name)
    head = num_classes = width = head_depth = head_heads = None
    if "head.head.weight" in state:
        num_classes = state["head.head.weight"].shape[0]
        if "head.proj.weight" in state:
            head, width = "bridging", state["head.proj.weight"].shape[0]
            head_depth = count_blocks(state, "head.blocks.")
            head_heads = (size.head_heads if size is not None and width == size.head_width
                          else max(1, width // 128))
        else:
            head = "linear"
    dec_dim = dec_depth = dec_heads = dec_ratio = None
    if "decoder.proj.weight" in state:
        dec_dim = state["decoder.proj.weight"].shape[0]
        dec_depth = count_blocks(state, "decoder.blocks.")
        dec_heads = _decoder_heads(name, dec_dim, decoder_heads or hints.decoder_heads)
        if dec_dim % dec_heads:
            raise ConversionError(f"decoder width {dec_dim} does not split into {dec_heads} "
                                  "attention heads")
        dec_ratio = _ratio(state, "decoder.blocks.0.mlp.fc1.weight", dec_dim)
    return Architecture(name, dim, depth, heads, mlp_ratio, patch_size, tubelet, in_chans,
                        "encoder.norm.weight" in state, head, num_classes, width, head_depth,
                        head_heads, dec_dim, dec_depth, dec_heads, dec_ratio)
