"""Image ViT weights: MAE (facebookresearch/mae) and timm ViTs.

The encoder blocks are ours except for the full ``attn.qkv.bias``, split into q_bias and
v_bias (the key third is dropped: it cannot change attention). The 2-D patch embedding
[D, C, p, p] is inflated to a tubelet [D, C, t, p, p] by repeating it over time and
dividing by t (paper Table IX(b)), so a clip of identical frames embeds exactly as one
image. The class token, the learned 2-D position table and the image decoder are dropped.
"""

from collections.abc import Mapping

from torch import Tensor

from .rules import Drop, Mapped, vit_block_rules
from .spec import Format, Hints

IMAGE_DECODER = ("image MAE decoder: it predicts 2-D patches from 2-D positions; the video "
                 "decoder starts new")
RULES = [
    ("patch_embed.proj.{p}", "encoder.patch_embed.proj.{p}"),
    *vit_block_rules("blocks", "encoder.blocks"),
    ("norm.{p}", "encoder.norm.{p}"),
    ("fc_norm.{p}", "head.fc_norm.{p}"),
    ("head.{p}", "head.head.{p}"),
    ("cls_token", Drop("class token: mar's encoder has none (the heads pool the tokens)")),
    ("pos_embed", Drop("learned 2-D position table of the image model (with its class-token "
                       "row): mar uses VideoMAE's fixed sinusoid table over (t, h, w)")),
    ("mask_token", Drop(IMAGE_DECODER)),
    ("decoder_pos_embed", Drop(IMAGE_DECODER)),
    ("decoder_embed.{p}", Drop(IMAGE_DECODER)),
    ("decoder_blocks.{rest}", Drop(IMAGE_DECODER)),
    ("decoder_norm.{p}", Drop(IMAGE_DECODER)),
    ("decoder_pred.{p}", Drop(IMAGE_DECODER)),
]


def inflate(weight: Tensor, tubelet_size: int) -> Tensor:
    """[D, C, p, p] -> [D, C, t, p, p], each time slice the 2-D kernel divided by t."""
    return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


def adapt(mapped: Mapped, hints: Hints, state: Mapping[str, Tensor]) -> None:
    key = "encoder.patch_embed.proj.weight"
    weight = mapped.state.get(key)
    if weight is not None and weight.ndim == 4:
        t = hints.tubelet_size
        mapped.state[key] = inflate(weight, t)
        hints.notes.append(f"patch embedding inflated from 2-D {list(weight.shape)} to 3-D "
                           f"{list(mapped.state[key].shape)}: repeated over the tubelet of {t} "
                           f"frames and divided by {t}")


FORMAT = Format("mae", "image ViT / MAE weights (timm layout, 2-D patch embedding)", RULES,
                adapt=adapt)
