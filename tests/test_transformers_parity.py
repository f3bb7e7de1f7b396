"""Our encoder against the real transformers VideoMAEModel with the same weights, the
weights going through the converter (a ``save_pretrained`` directory)."""

import math

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEModel

from mar import make_masking
from mar.convert import convert_checkpoint


@pytest.mark.parametrize("final_norm", [True, False])
def test_encoder_matches_transformers_videomae(tmp_path, final_norm):
    torch.manual_seed(0)
    cfg = VideoMAEConfig(image_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                         hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=256, layer_norm_eps=1e-6, qkv_bias=True,
                         use_mean_pooling=not final_norm, attn_implementation="eager")
    hf = VideoMAEModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial biases and norms
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    model, report = convert_checkpoint(tmp_path, head="none")
    assert not (report.missing or report.unexpected or report.dropped)
    assert report.config["final_norm"] is final_norm and report.config["name"] == "vit_nano"
    enc = model.encoder
    video = torch.randn(2, 3, 8, 32, 32)
    mask = make_masking("cell_running", 0.5)(2, model.grid, train=False)
    with torch.no_grad():
        ours = enc(video, mask)
        theirs = hf(video.transpose(1, 2), bool_masked_pos=mask.bool()).last_hidden_state
        assert torch.allclose(ours, theirs, atol=1e-5)
        full = hf(video.transpose(1, 2)).last_hidden_state
        assert torch.allclose(enc(video), full, atol=1e-5)
        none = make_masking("cell_running", 0.0)(2, model.grid, train=False)   # ratio 0
        theirs = hf(video.transpose(1, 2), bool_masked_pos=none.bool()).last_hidden_state
        assert torch.allclose(enc(video, none), theirs, atol=1e-5)
    assert math.isclose(sum(p.numel() for p in enc.parameters()),
                        sum(p.numel() for p in hf.parameters()))
