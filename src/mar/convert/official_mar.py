"""Checkpoints of the official MAR code (alibaba-mmai-research/Masked-Action-Recognition).

The weights sit under ``model_state``. ``backbone.`` is the VideoMAE encoder;
``encoder_to_cls_decoder`` is our bridging head's ``proj``; ``cls_head.`` is the bridging
head (``TransformerBridgingClsHead``), whose blocks (``BaseTransformerLayer``) name their
layers ``norm``, ``attn.to_qkv`` (with a full bias), ``attn.proj``, ``norm_ffn``,
``ffn.net.0`` and ``ffn.net.3``; the decoder keys are VideoMAE's. The model also stores
the input ``mean``/``std`` and the decoder's fixed ``pos_embed`` as parameters.
"""

from collections.abc import Mapping

from torch import Tensor

from .rules import POS_TABLE, Drop, Mapped, SplitQKV, vit_block_rules
from .spec import Format, Hints

UNUSED = "created by the official model but never used in its forward pass"
STATS = "input normalisation statistics: written to config.json as pixel_mean/pixel_std"

_BRIDGING_BLOCK = [
    ("norm", "norm1"), ("attn.proj", "attn.proj"), ("norm_ffn", "norm2"),
    ("ffn.net.0", "mlp.fc1"), ("ffn.net.3", "mlp.fc2"),
]

RULES = [
    ("backbone.patch_embed.proj.{p}", "encoder.patch_embed.proj.{p}"),
    *vit_block_rules("backbone.blocks", "encoder.blocks"),
    ("backbone.norm.{p}", "encoder.norm.{p}"),
    ("backbone.pos_embed", Drop(POS_TABLE)),
    ("encoder_to_cls_decoder.weight", "head.proj.weight"),
    *((f"cls_head.blocks.{{i}}.{theirs}.{{p}}", f"head.blocks.{{i}}.{ours}.{{p}}")
      for theirs, ours in _BRIDGING_BLOCK),
    ("cls_head.blocks.{i}.attn.to_qkv.weight", "head.blocks.{i}.attn.qkv.weight"),
    ("cls_head.blocks.{i}.attn.to_qkv.bias",
     SplitQKV("head.blocks.{i}.attn.q_bias", "head.blocks.{i}.attn.v_bias")),
    ("cls_head.norm.{p}", "head.norm.{p}"),
    ("cls_head.head.{p}", "head.head.{p}"),
    ("cls_head.mask_token", Drop(UNUSED)),
    ("encoder_to_decoder.weight", "decoder.proj.weight"),
    ("mask_token", "decoder.mask_token"),
    *vit_block_rules("decoder.blocks", "decoder.blocks"),
    ("decoder.norm.{p}", "decoder.norm.{p}"),
    ("decoder.head.{p}", "decoder.head.{p}"),
    ("pos_embed", Drop(POS_TABLE)),
    ("pos_embed_cls", Drop(UNUSED)),
    ("mask_token_cls", Drop(UNUSED)),
    ("fc_norm.{p}", Drop(UNUSED)),
    ("mean", Drop(STATS)),
    ("std", Drop(STATS)),
]


def adapt(mapped: Mapped, hints: Hints, state: Mapping[str, Tensor]) -> None:
    """Keep the file's input statistics (``mean``/``std``, shape (1, 3, 1, 1, 1))."""
    if "mean" in state and "std" in state:
        hints.pixel_mean = tuple(round(float(x), 6) for x in state["mean"].flatten())
        hints.pixel_std = tuple(round(float(x), 6) for x in state["std"].flatten())


# all four official configs test with CellRunningMaskAgent at MASK_RATIO 0.5: phase 0, frames
# in order (no test shuffle), which is mar's cell_running evaluation mask
TEST_MASKING = {"name": "cell_running", "ratio": 0.5}
TEST_MASKING_REASON = ("the official MAR code tests with cell running masking at ratio 0.5 "
                       "(phase 0, frames in order), the mask these weights were trained for")

FORMAT = Format("mar", "the official MAR code's checkpoints (model_state, backbone., cls_head.)",
                RULES, adapt=adapt, masking=TEST_MASKING, masking_reason=TEST_MASKING_REASON)
