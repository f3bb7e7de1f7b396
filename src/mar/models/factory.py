"""Model sizes as one table, and ``create_model`` that builds any of them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .decoder import ReconstructionDecoder
from .encoder import VideoEncoder
from .heads import BridgingHead, LinearHead, MLPHead
from .mar import MAR
from .patch_embed import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Size:
    """Encoder dims with the matching VideoMAE decoder and the default bridging head."""

    embed_dim: int
    depth: int
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    head_width: int = 512
    head_depth: int = 2
    head_heads: int = 4


# ViT-S/B/L/H and their pretraining decoders as VideoMAE (MCG-NJU/VideoMAE scripts);
# vit_nano is ours, small enough for tests and the CPU demo.
SIZES: dict[str, Size] = {
    "vit_nano": Size(64, 4, 2, 32, 1, 2, head_width=64, head_depth=1, head_heads=2),
    "vit_tiny": Size(192, 12, 3, 96, 4, 3, head_width=192, head_depth=2, head_heads=3),
    "vit_small": Size(384, 12, 6, 192, 4, 3),
    "vit_base": Size(768, 12, 12, 384, 4, 6),
    "vit_large": Size(1024, 24, 16, 512, 12, 8),
    "vit_huge": Size(1280, 32, 16, 640, 12, 8),
}

HEADS = ("bridging", "linear", "mlp", "none")


def create_model(name: str = "vit_base", *, num_classes: int = 400, num_frames: int = 16,
                 img_size: int = 224, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, drop_path: float = 0.0, final_norm: bool = True,
                 head: str = "bridging", head_width: int | None = None,
                 head_depth: int | None = None, head_heads: int | None = None,
                 head_dropout: float = 0.1, head_pos_embed: bool = False,
                 head_mask_tokens: bool = False, decoder: bool = False,
                 decoder_dim: int | None = None, decoder_depth: int | None = None,
                 decoder_heads: int | None = None, norm_target: bool = True,
                 pixel_mean: tuple[float, ...] = IMAGENET_MEAN,
                 pixel_std: tuple[float, ...] = IMAGENET_STD) -> MAR:
    """Build a MAR model, e.g. ``create_model("vit_base", num_classes=174, head="bridging")``.

    ``head``: ``bridging`` (MAR), ``linear`` (VideoMAE's standard head), ``mlp``, or
    ``none`` (no classifier: self-supervised pretraining, encoder + decoder only).
    ``head_width/depth/heads`` default to the size's bridging head (512 / 2 / 4 for
    ViT-S to H, as the official MAR configs). ``decoder=True`` adds the reconstruction
    branch with the VideoMAE decoder of that size; without it the model is the deploy
    model and has no training-only parameters.
    """
    if name not in SIZES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SIZES)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    size = SIZES[name]
    encoder = VideoEncoder(img_size, num_frames, patch_size, tubelet_size, in_chans,
                           size.embed_dim, size.depth, size.num_heads,
                           drop_path_rate=drop_path, final_norm=final_norm)
    dim, num_tokens = size.embed_dim, math.prod(encoder.grid)
    width = head_width or size.head_width
    depth = size.head_depth if head_depth is None else head_depth
    if head == "none":
        cls_head = None
    elif head == "linear":
        cls_head = LinearHead(dim, num_classes, head_dropout)
    elif head == "mlp":
        cls_head = MLPHead(dim, num_classes, width, depth, head_dropout)
    else:
        heads = head_heads or (size.head_heads if head_width is None else max(1, width // 128))
        cls_head = BridgingHead(dim, num_classes, width, depth, heads, dropout=head_dropout,
                                pos_embed=head_pos_embed, mask_tokens=head_mask_tokens,
                                num_tokens=num_tokens)
    rec = None
    if decoder:
        rec = ReconstructionDecoder(dim, num_tokens, in_chans * tubelet_size * patch_size**2,
                                    decoder_dim or size.decoder_dim,
                                    size.decoder_depth if decoder_depth is None else decoder_depth,
                                    decoder_heads or size.decoder_heads)
    return MAR(encoder, cls_head, rec, norm_target, pixel_mean, pixel_std)
