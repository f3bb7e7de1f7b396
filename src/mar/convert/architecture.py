"""The model a state dict (under our names) was made for, read from its tensors' shapes.

Widths, depths, patch and tubelet sizes and class counts are in the shapes; the number of
attention heads is not (it only splits the width), so it comes from the file's config
where there is one (transformers), else from the ``SIZES`` table by width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from ..models import SIZES
from .formats import Hints
from .report import ConversionError


@dataclass(frozen=True)
class Architecture:
    name: str                       # a SIZES entry
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


def count_blocks(state: dict[str, Tensor], prefix: str) -> int:
    """How many ``{prefix}{i}.`` blocks there are; the indices must run 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m[1]) for k in state if (m := pattern.match(k))}
    if ids != set(range(len(ids))):
        raise ConversionError(f"{prefix}N: block indices {sorted(ids)} do not run from 0")
    return len(ids)


def _size_name(dim: int, depth: int, num_heads: int | None) -> str:
    for name, size in SIZES.items():
        if (size.embed_dim, size.depth) == (dim, depth):
            if num_heads is not None and num_heads != size.num_heads:
                raise ConversionError(f"the file's config gives {num_heads} attention heads for "
                                      f"width {dim}, depth {depth}; mar's {name} has "
                                      f"{size.num_heads}")
            return name
    known = ", ".join(f"{n} {s.embed_dim}x{s.depth}" for n, s in SIZES.items())
    raise ConversionError(f"no mar model of width {dim} and depth {depth} (known: {known})")


def _decoder_heads(name: str, dim: int, hint: int | None) -> int:
    if hint is not None:
        return hint
    sizes = [SIZES[name], *SIZES.values()]   # the encoder's own pairing first
    heads = next((s.decoder_heads for s in sizes if s.decoder_dim == dim), None)
    if heads is None:
        raise ConversionError(f"decoder width {dim} matches no VideoMAE decoder; known: "
                              f"{sorted({s.decoder_dim for s in SIZES.values()})}")
    return heads


def infer_architecture(state: dict[str, Tensor], hints: Hints) -> Architecture:
    """Read the model's dims from ``state`` (our key names)."""
    patch = state.get("encoder.patch_embed.proj.weight")
    if patch is None or patch.ndim != 5 or patch.shape[-1] != patch.shape[-2]:
        shape = None if patch is None else list(patch.shape)
        raise ConversionError(f"no usable patch embedding (encoder.patch_embed.proj.weight: "
                              f"{shape}; expected [D, C, t, p, p])")
    dim, in_chans, tubelet, patch_size = patch.shape[0], patch.shape[1], patch.shape[2], \
        patch.shape[-1]
    depth = count_blocks(state, "encoder.blocks.")
    fc1 = state.get("encoder.blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.shape[0] != 4 * dim:
        raise ConversionError(f"MLP width {fc1.shape[0]} for width {dim}: mar's blocks have an "
                              "MLP ratio of 4")
    name = _size_name(dim, depth, hints.num_heads)
    head = num_classes = width = head_depth = head_heads = None
    if "head.head.weight" in state:
        num_classes = state["head.head.weight"].shape[0]
        if "head.proj.weight" in state:
            head, width = "bridging", state["head.proj.weight"].shape[0]
            head_depth = count_blocks(state, "head.blocks.")
            size = SIZES[name]
            head_heads = size.head_heads if width == size.head_width else max(1, width // 128)
        else:
            head = "linear"
    dec_dim = dec_depth = dec_heads = None
    if "decoder.proj.weight" in state:
        dec_dim = state["decoder.proj.weight"].shape[0]
        dec_depth = count_blocks(state, "decoder.blocks.")
        dec_heads = _decoder_heads(name, dec_dim, hints.decoder_heads)
    return Architecture(name, patch_size, tubelet, in_chans, "encoder.norm.weight" in state,
                        head, num_classes, width, head_depth, head_heads,
                        dec_dim, dec_depth, dec_heads)
