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
    decoder_dim: int | None         # None: unknown (a model outside the table)
    decoder_depth: int | None
    decoder_heads: int | None
    head_width: int = 512
    head_depth: int = 2
    head_heads: int = 4
    mlp_ratio: float = 4.0          # encoder MLP hidden = int(embed_dim * mlp_ratio)
    decoder_mlp_ratio: float = 4.0


# ViT-S/B/L/H and their pretraining decoders as VideoMAE (MCG-NJU/VideoMAE scripts);
# ViT-g as VideoMAE V2 (OpenGVLab/VideoMAEv2: 1408 wide, 40 deep, 16 heads, MLP 6144, used
# with 14x14 patches); its decoder (512 wide, 4 deep, 8 heads) is the pretraining decoder as
# we know it, not checked against the V2 code, and the converter reads a file's own decoder
# from its shapes. vit_nano is ours, small enough for tests and the CPU demo.
SIZES: dict[str, Size] = {
    "vit_nano": Size(64, 4, 2, 32, 1, 2, head_width=64, head_depth=1, head_heads=2),
    "vit_tiny": Size(192, 12, 3, 96, 4, 3, head_width=192, head_depth=2, head_heads=3),
    "vit_small": Size(384, 12, 6, 192, 4, 3),
    "vit_base": Size(768, 12, 12, 384, 4, 6),
    "vit_large": Size(1024, 24, 16, 512, 12, 8),
    "vit_huge": Size(1280, 32, 16, 640, 12, 8),
    "vit_giant": Size(1408, 40, 16, 512, 4, 8, mlp_ratio=48 / 11),
}

HEADS = ("bridging", "linear", "mlp", "none")
INITS = ("trunc_normal", "xavier")  # VideoMAE's fine-tuning and pretraining inits


def create_model(name: str = "vit_base", *, num_classes: int = 400, num_frames: int = 16,
                 img_size: int = 224, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, mlp_ratio: float | None = None,
                 drop_path: float = 0.0, final_norm: bool = True,
                 head: str = "bridging", head_width: int | None = None,
                 head_depth: int | None = None, head_heads: int | None = None,
                 head_dropout: float = 0.1, head_pos_embed: bool = False,
                 head_mask_tokens: bool = False, decoder: bool = False,
                 decoder_dim: int | None = None, decoder_depth: int | None = None,
                 decoder_heads: int | None = None, decoder_mlp_ratio: float | None = None,
                 norm_target: bool = True, init: str = "trunc_normal",
                 pixel_mean: tuple[float, ...] = IMAGENET_MEAN,
                 pixel_std: tuple[float, ...] = IMAGENET_STD) -> MAR:
    """Build a MAR model, e.g. ``create_model("vit_base", num_classes=174, head="bridging")``.

    ``head``: ``bridging`` (MAR), ``linear`` (VideoMAE's standard head), ``mlp``, or
    ``none`` (no classifier: self-supervised pretraining, encoder + decoder only).
    ``head_width/depth/heads`` default to the size's bridging head (512 / 2 / 4 for
    ViT-S to H, as the official MAR configs). ``decoder=True`` adds the reconstruction
    branch with the VideoMAE decoder of that size; without it the model is the deploy
    model and has no training-only parameters.

    ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio`` (encoder) and ``decoder_dim``,
    ``decoder_depth``, ``decoder_heads``, ``decoder_mlp_ratio`` override the size table,
    so any shape can be built. A ``name`` outside the table is a label: it needs
    ``embed_dim``, ``depth`` and ``num_heads`` (and the decoder dims with ``decoder``);
    the MLP ratios default to 4 and the bridging head to 512 wide, 2 deep, 4 heads.

    ``init`` initialises the encoder and decoder of a fresh model: ``trunc_normal``
    (std 0.02 linears: VideoMAE's fine-tuning init) or ``xavier`` (VideoMAE's
    pretraining init). Loaded or converted weights replace either.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    size = _size(name, embed_dim, depth, num_heads)
    dim = _pick(embed_dim, size.embed_dim)
    encoder = VideoEncoder(img_size, num_frames, patch_size, tubelet_size, in_chans, dim,
                           _pick(depth, size.depth), _pick(num_heads, size.num_heads),
                           _pick(mlp_ratio, size.mlp_ratio), drop_path_rate=drop_path,
                           final_norm=final_norm, init=init)
    num_tokens = math.prod(encoder.grid)
    width = head_width or size.head_width
    hdepth = size.head_depth if head_depth is None else head_depth
    if head == "none":
        cls_head = None
    elif head == "linear":
        cls_head = LinearHead(dim, num_classes, head_dropout)
    elif head == "mlp":
        cls_head = MLPHead(dim, num_classes, width, hdepth, head_dropout)
    else:
        heads = head_heads or (size.head_heads if head_width is None else max(1, width // 128))
        cls_head = BridgingHead(dim, num_classes, width, hdepth, heads, dropout=head_dropout,
                                pos_embed=head_pos_embed, mask_tokens=head_mask_tokens,
                                num_tokens=num_tokens)
    rec = None
    if decoder:
        dec = (_pick(decoder_dim, size.decoder_dim), _pick(decoder_depth, size.decoder_depth),
               _pick(decoder_heads, size.decoder_heads))
        if None in dec:
            raise ValueError(f"model {name!r} is not in the size table: a decoder needs "
                             "decoder_dim, decoder_depth and decoder_heads")
        rec = ReconstructionDecoder(dim, num_tokens, in_chans * tubelet_size * patch_size**2,
                                    *dec, _pick(decoder_mlp_ratio, size.decoder_mlp_ratio),
                                    init=init)
    return MAR(encoder, cls_head, rec, norm_target, pixel_mean, pixel_std)


def _size(name: str, embed_dim: int | None, depth: int | None, num_heads: int | None) -> Size:
    """The table entry for ``name``; for a name outside the table, a blank entry (the
    decoder unknown) once the encoder dims are all given."""
    if name in SIZES:
        return SIZES[name]
    if None in (embed_dim, depth, num_heads):
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SIZES)} (another name "
                         "needs explicit embed_dim, depth and num_heads)")
    return Size(embed_dim, depth, num_heads, decoder_dim=None, decoder_depth=None,
                decoder_heads=None)


def _pick(value, default):
    return default if value is None else value
