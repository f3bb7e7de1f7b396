"""Official VideoMAE / VideoMAE V2 checkpoints (MCG-NJU/VideoMAE, OpenGVLab/VideoMAEv2).

Pretraining files prefix the encoder with ``encoder.`` and hold the decoder
(``decoder.blocks``, ``decoder.norm``, ``decoder.head``, ``encoder_to_decoder``,
``mask_token``). Fine-tuned files have no prefix, no final ``norm`` (mean pooling) and a
``fc_norm`` + ``head`` classifier. Block names are ours already.
"""

from .rules import POS_TABLE, Drop, vit_block_rules
from .spec import Format

RULES = [
    ("patch_embed.proj.{p}", "encoder.patch_embed.proj.{p}"),
    *vit_block_rules("blocks", "encoder.blocks"),
    ("norm.{p}", "encoder.norm.{p}"),
    ("pos_embed", Drop(POS_TABLE)),
    ("fc_norm.{p}", "head.fc_norm.{p}"),
    ("head.{p}", "head.head.{p}"),
    ("encoder_to_decoder.weight", "decoder.proj.weight"),
    ("mask_token", "decoder.mask_token"),
    *vit_block_rules("decoder.blocks", "decoder.blocks"),
    ("decoder.norm.{p}", "decoder.norm.{p}"),
    ("decoder.head.{p}", "decoder.head.{p}"),
]

FORMAT = Format("videomae", "official VideoMAE / VideoMAE V2 (.pth)", RULES,
                strip=("encoder.",))
