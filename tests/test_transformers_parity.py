"""Our encoder against the real transformers VideoMAEModel with the same weights."""

import math

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEModel

from mar import create_model, make_masking

TINY = dict(num_classes=5, num_frames=8, img_size=32, patch_size=8)


def _to_hf(state: dict, depth: int, final_norm: bool, bias_names: tuple[str, str]) -> dict:
    """Our encoder's weights under transformers' VideoMAEModel names (test-only mapping).

    transformers 5 names the biases ``query.bias``/``value.bias``; 4.x ``q_bias``/``v_bias``.
    """
    out = {"embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"]}
    if final_norm:
        out["layernorm.weight"], out["layernorm.bias"] = state["norm.weight"], state["norm.bias"]
    for i in range(depth):
        s, h = f"blocks.{i}.", f"encoder.layer.{i}."
        q, k, v = state[s + "attn.qkv.weight"].chunk(3)
        out |= {h + "attention.attention.query.weight": q,
                h + "attention.attention.key.weight": k,
                h + "attention.attention.value.weight": v,
                h + "attention.attention." + bias_names[0]: state[s + "attn.q_bias"],
                h + "attention.attention." + bias_names[1]: state[s + "attn.v_bias"]}
        for ours, theirs in [("attn.proj", "attention.output.dense"),
                             ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                             ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]:
            for p in ("weight", "bias"):
                out[f"{h}{theirs}.{p}"] = state[f"{s}{ours}.{p}"]
    return out


@pytest.mark.parametrize("final_norm", [True, False])
def test_encoder_matches_transformers_videomae(final_norm):
    torch.manual_seed(0)
    model = create_model("vit_nano", **TINY, final_norm=final_norm).eval()
    for p in model.encoder.parameters():  # non-trivial biases and norms
        torch.nn.init.normal_(p, std=0.05) if p.dim() == 1 else None
    enc = model.encoder
    cfg = VideoMAEConfig(image_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                         hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=256, layer_norm_eps=1e-6, qkv_bias=True,
                         use_mean_pooling=not final_norm, attn_implementation="eager")
    hf = VideoMAEModel(cfg).eval()
    new = "encoder.layer.0.attention.attention.query.bias" in hf.state_dict()
    names = ("query.bias", "value.bias") if new else ("q_bias", "v_bias")
    hf.load_state_dict(_to_hf(enc.state_dict(), 4, final_norm, names), strict=True)
    video = torch.randn(2, 3, 8, 32, 32)
    mask = make_masking("cell_running", 0.5)(2, model.grid, train=False)
    with torch.no_grad():
        ours = enc(video, mask)
        theirs = hf(video.transpose(1, 2), bool_masked_pos=mask.bool()).last_hidden_state
        assert torch.allclose(ours, theirs, atol=1e-5)
        full = hf(video.transpose(1, 2)).last_hidden_state
        assert torch.allclose(enc(video), full, atol=1e-5)
    assert math.isclose(sum(p.numel() for p in enc.parameters()),
                        sum(p.numel() for p in hf.parameters()))
