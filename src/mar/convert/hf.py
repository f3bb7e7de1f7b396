"""transformers' VideoMAE: ``VideoMAEModel``, ``VideoMAEForPreTraining`` and
``VideoMAEForVideoClassification`` state dicts, or a directory saved by ``save_pretrained``.

The encoder sits under ``videomae.`` in the wrapped classes. q, k and v are separate
bias-free Linear layers (fused here into our ``qkv.weight`` in q, k, v row order); the q
and v biases are ``q_bias``/``v_bias`` in hub files and transformers 4.x, and
``query.bias``/``value.bias`` in transformers 5's in-memory state dict; no key bias.
``videomae.layernorm`` is the encoder's final norm (absent with mean pooling).
"""

from collections.abc import Mapping

from torch import Tensor

from .report import ConversionError
from .rules import KEY_BIAS, POS_TABLE, Drop, Mapped, Rule
from .spec import Format, Hints

_LAYER = [
    ("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
    ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
]


def layer_rules(src: str, dst: str) -> list[Rule]:
    """One transformers ``VideoMAELayer`` stack (``src``) to our blocks (``dst``)."""
    att, ours = f"{src}.{{i}}.attention.attention.", f"{dst}.{{i}}.attn."
    return [(f"{src}.{{i}}.{theirs}.{{p}}", f"{dst}.{{i}}.{mine}.{{p}}")
            for theirs, mine in _LAYER] + [
        (att + "query.weight", ours + "qkv.weight[q]"),
        (att + "key.weight", ours + "qkv.weight[k]"),
        (att + "value.weight", ours + "qkv.weight[v]"),
        (att + "q_bias", ours + "q_bias"),
        (att + "query.bias", ours + "q_bias"),
        (att + "v_bias", ours + "v_bias"),
        (att + "value.bias", ours + "v_bias"),
        (att + "key.bias", Drop(KEY_BIAS)),
    ]


RULES = [
    ("embeddings.patch_embeddings.projection.{p}", "encoder.patch_embed.proj.{p}"),
    ("embeddings.position_embeddings", Drop(POS_TABLE)),
    *layer_rules("encoder.layer", "encoder.blocks"),
    ("layernorm.{p}", "encoder.norm.{p}"),
    ("fc_norm.{p}", "head.fc_norm.{p}"),
    ("classifier.{p}", "head.head.{p}"),
    ("encoder_to_decoder.weight", "decoder.proj.weight"),
    ("mask_token", "decoder.mask_token"),
    ("decoder.position_embeddings", Drop(POS_TABLE)),
    *layer_rules("decoder.decoder_layers", "decoder.blocks"),
    ("decoder.norm.{p}", "decoder.norm.{p}"),
    ("decoder.head.{p}", "decoder.head.{p}"),
]


def adapt(mapped: Mapped, hints: Hints, state: Mapping[str, Tensor]) -> None:
    """Read heads, clip size and LayerNorm eps from config.json; flag a classifier that
    reads the first token (``use_mean_pooling: false``): mar cannot reproduce it."""
    cfg = hints.config or {}
    first_token = cfg.get("use_mean_pooling") is False or "head.fc_norm.weight" not in mapped.state
    if "head.head.weight" in mapped.state and first_token:
        hints.head_problem = ("the classifier reads the first token (use_mean_pooling: false), "
                              "while mar's heads pool all tokens")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"hidden_act {cfg['hidden_act']!r}: mar's blocks use GELU")
    hints.num_heads = cfg.get("num_attention_heads")
    hints.decoder_heads = cfg.get("decoder_num_attention_heads")
    hints.num_frames = cfg.get("num_frames")
    hints.img_size = cfg.get("image_size")
    eps = cfg.get("layer_norm_eps")
    if eps is not None and eps != 1e-6:
        hints.notes.append(f"config.json has layer_norm_eps={eps:g}; mar's LayerNorms use 1e-6 "
                           "as the original VideoMAE (a relative difference of about the eps)")
    for key, name in (("head.fc_norm.weight", "fc_norm"), ("decoder.norm.weight", "decoder.norm")):
        hints.notes_if_loaded[key] = (f"transformers builds {name} with eps 1e-5; mar uses 1e-6 as "
                                      "the original VideoMAE the weights come from")


FORMAT = Format("hf", "transformers VideoMAE (directory or state dict)", RULES,
                strip=("videomae.",), adapt=adapt)
