import numpy as np
import pytest
import torch

from mar import MAROutput, create_model, make_masking
from mar.losses import mar_loss
from mar.models import SIZES, patchify, reconstruction_target, sinusoid_table, unpatchify
from mar.models.layers import Attention

TINY = dict(num_classes=5, num_frames=8, img_size=32, patch_size=8)  # grid (4, 4, 4)
HEAD_VARIANTS = [
    dict(head="bridging"),
    dict(head="bridging", head_pos_embed=True),
    dict(head="bridging", head_mask_tokens=True, head_pos_embed=True),
    dict(head="linear"),
    dict(head="mlp", head_width=32, head_depth=2),
]


def clip(batch=2, seed=0, frames=8, size=32):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def cell_mask(model, batch=2, ratio=0.5, train=False):
    return make_masking("cell_running", ratio)(batch, model.grid, train=train,
                                               generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs", HEAD_VARIANTS)
def test_shapes_and_deploy_model(kwargs):
    torch.manual_seed(0)
    model = create_model("vit_nano", **TINY, **kwargs).eval()
    assert model.grid == (4, 4, 4)
    assert model.decoder is None
    assert not any(n.startswith("decoder") for n, _ in model.named_parameters())
    logits = model.classify(clip(), cell_mask(model))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5)
    out = model(clip(), cell_mask(model))             # training's output: no decoder terms
    assert torch.equal(out.logits, logits) and out.pred is None and out.target is None


def test_encoder_blocks_see_exactly_the_visible_tokens():
    model = create_model("vit_nano", **TINY, decoder=True)
    seen = []
    for block in model.encoder.blocks:
        block.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    for ratio, visible in [(0.0, 64), (0.25, 48), (0.5, 32), (0.75, 16)]:
        seen.clear()
        mask = cell_mask(model, ratio=ratio, train=True)
        assert mask.num_visible == visible
        out = model(clip(), mask)
        assert seen == [visible] * len(model.encoder.blocks)
        assert out.pred.shape == (2, 64 - visible, 3 * 2 * 8 * 8)


def test_masked_pixels_do_not_reach_the_classifier():
    model = create_model("vit_nano", **TINY).eval()
    mask = cell_mask(model)
    video = clip()
    patches = patchify(video, 8, 2)
    noisy = patches.clone()
    rows = torch.arange(2)[:, None]
    noisy[rows, mask.ids_mask] += 5 * torch.randn_like(noisy[rows, mask.ids_mask])
    changed = unpatchify(noisy, model.grid, 8, 2)
    with torch.no_grad():
        assert torch.allclose(model.classify(video, mask), model.classify(changed, mask),
                              atol=1e-6)
        # ... while a visible patch does
        noisy[rows, mask.ids_keep[:, :1]] += 5.0
        assert not torch.allclose(model.classify(video, mask),
                                  model.classify(unpatchify(noisy, model.grid, 8, 2), mask),
                                  atol=1e-4)


@pytest.mark.parametrize("kwargs", HEAD_VARIANTS)
def test_every_parameter_gets_a_gradient_in_training(kwargs):
    torch.manual_seed(0)
    model = create_model("vit_nano", **TINY, **kwargs, decoder=True, drop_path=0.1).train()
    out = model(clip(), cell_mask(model, train=True))
    assert isinstance(out, MAROutput)
    loss = mar_loss(out, torch.tensor([1, 3]), rec_weight=0.1).total
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_ratio_zero_equals_the_unmasked_model():
    model = create_model("vit_nano", **TINY).eval()
    video = clip()
    with torch.no_grad():
        full = model.classify(video)
        for name in ("cell_running", "random", "tube"):
            mask = make_masking(name, 0.0)(2, model.grid, train=False)
            assert torch.equal(model.classify(video, mask), full)


def test_decoder_predicts_masked_patches_in_ids_mask_order():
    model = create_model("vit_nano", **TINY, decoder=True, norm_target=False).eval()
    mask = cell_mask(model)
    video = clip()
    out = model(video, mask)
    target = reconstruction_target(video, 8, 2, normalize=False)
    assert torch.equal(out.target, target[torch.arange(2)[:, None], mask.ids_mask])


def test_decoder_output_does_not_depend_on_token_storage_order():
    # VideoMAE concatenates [visible, masked]; the official MAR code decodes all tokens in
    # (t, h, w) order. Without an order-dependent operation the two are the same.
    model = create_model("vit_nano", **TINY, decoder=True).eval()
    mask = cell_mask(model)
    dec = model.decoder
    with torch.no_grad():
        tokens = model.forward_features(clip(), mask)
        pred = dec(tokens, mask)
        x = dec.proj(tokens)
        full = dec.mask_token.expand(2, 64, -1).clone()
        full[torch.arange(2)[:, None], mask.ids_keep] = x
        full = full + dec.pos_embed
        for block in dec.blocks:
            full = block(full)
        ref = dec.head(dec.norm(full))[torch.arange(2)[:, None], mask.ids_mask]
    assert torch.allclose(pred, ref, atol=1e-5)


def test_patchify_layout_and_round_trip():
    video = clip(1, frames=4, size=16)
    p = patchify(video, 8, 2)
    assert p.shape == (1, 2 * 2 * 2, 2 * 8 * 8 * 3)
    # token 1 is (t=0, h=0, w=1); its first value is frame 0, pixel (0, 8), channel 0
    assert p[0, 1, 0] == video[0, 0, 0, 0, 8]
    assert p[0, 1, 1] == video[0, 1, 0, 0, 8]  # channel varies fastest
    assert torch.equal(unpatchify(p, (2, 2, 2), 8, 2), video)


def test_normalised_targets_are_standardised_per_patch_and_channel():
    video = clip(2)
    t = reconstruction_target(video, 8, 2).view(2, 64, 128, 3)
    assert torch.allclose(t.mean(2), torch.zeros(2, 64, 3), atol=1e-5)
    assert torch.allclose(t.std(2, unbiased=True), torch.ones(2, 64, 3), atol=1e-4)
    raw = reconstruction_target(video, 8, 2, mean=(0.5,) * 3, std=(2.0,) * 3, normalize=False)
    assert torch.allclose(raw, patchify(video * 2.0 + 0.5, 8, 2))


def test_position_table_matches_videomae_formula():
    n, d = 50, 24
    pos = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(d) // 2) / d)
    ref = np.zeros((n, d))
    ref[:, 0::2] = np.sin(pos[:, 0::2])
    ref[:, 1::2] = np.cos(pos[:, 1::2])
    assert torch.allclose(sinusoid_table(n, d)[0], torch.tensor(ref, dtype=torch.float32),
                          atol=1e-6)


def test_attention_matches_the_textbook_formula():
    torch.manual_seed(0)
    attn = Attention(16, 4)
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 7, 16)
    w = attn.qkv.weight
    q = x @ w[:16].T + attn.q_bias
    k = x @ w[16:32].T
    v = x @ w[32:].T + attn.v_bias

    def heads(t):
        return t.view(2, 7, 4, 4).transpose(1, 2)

    a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 2.0, dim=-1)
    ref = attn.proj((a @ heads(v)).transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_state_dict_uses_videomae_names_and_stores_no_position_table():
    keys = set(create_model("vit_nano", **TINY, decoder=True).state_dict())
    for key in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
                "encoder.blocks.0.attn.q_bias", "encoder.blocks.0.attn.v_bias",
                "encoder.blocks.0.mlp.fc1.weight", "encoder.norm.weight",
                "decoder.proj.weight", "decoder.mask_token", "decoder.head.weight",
                "head.proj.weight", "head.blocks.0.attn.qkv.weight", "head.head.weight"):
        assert key in keys
    assert not [k for k in keys if "pos_embed" in k or "k_bias" in k or "qkv.bias" in k]


def test_sizes_match_videomae_dimensions():
    assert (SIZES["vit_base"].embed_dim, SIZES["vit_base"].depth,
            SIZES["vit_base"].num_heads) == (768, 12, 12)
    assert (SIZES["vit_large"].embed_dim, SIZES["vit_large"].depth) == (1024, 24)
    assert (SIZES["vit_huge"].embed_dim, SIZES["vit_huge"].depth) == (1280, 32)
    with torch.device("meta"):
        b = create_model("vit_base", decoder=True)
    assert (b.decoder.proj.out_features, len(b.decoder.blocks)) == (384, 4)
    assert b.decoder.head.out_features == 1536


def test_vit_giant_is_videomae_v2_vit_g():
    g = SIZES["vit_giant"]
    assert (g.embed_dim, g.depth, g.num_heads) == (1408, 40, 16)
    with torch.device("meta"):
        model = create_model("vit_giant", patch_size=14, head="linear", decoder=True)
    block = model.encoder.blocks[0]
    assert block.mlp.fc1.weight.shape == (6144, 1408) and block.attn.num_heads == 16
    assert len(model.encoder.blocks) == 40 and model.grid == (8, 16, 16)
    assert (model.decoder.proj.out_features, len(model.decoder.blocks),
            model.decoder.blocks[0].attn.num_heads) == (512, 4, 8)


def test_explicit_dims_override_the_size_table():
    with torch.device("meta"):
        model = create_model("vit_base", embed_dim=96, depth=3, num_heads=4, mlp_ratio=200 / 96,
                             decoder=True, decoder_dim=48, decoder_depth=2, decoder_heads=3,
                             decoder_mlp_ratio=2.5)
        custom = create_model("my_vit", embed_dim=96, depth=3, num_heads=4, head="linear")
    enc = model.encoder
    assert (enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads) == (96, 3, 4)
    assert enc.blocks[0].mlp.fc1.out_features == 200
    dec = model.decoder
    assert (dec.proj.out_features, len(dec.blocks), dec.blocks[0].attn.num_heads) == (48, 2, 3)
    assert dec.blocks[0].mlp.fc1.out_features == 120
    assert custom.encoder.blocks[0].mlp.fc1.out_features == 384     # MLP ratio 4 by default
    with pytest.raises(ValueError, match="unknown model 'my_vit'.*embed_dim, depth and num_heads"):
        create_model("my_vit", embed_dim=96, depth=3)
    with pytest.raises(ValueError, match="a decoder needs decoder_dim"):
        create_model("my_vit", embed_dim=96, depth=3, num_heads=4, decoder=True)


def test_training_config_takes_explicit_dims():
    from mar.config import ConfigError, ModelConfig

    cfg = ModelConfig(name="custom", embed_dim=96, depth=3, num_heads=4, mlp_ratio=200 / 96,
                      num_classes=5, num_frames=8, img_size=32, patch_size=8)
    model = cfg.build()
    assert model.encoder.blocks[0].mlp.fc1.out_features == 200
    assert ModelConfig(name="vit_giant").embed_dim is None          # None: from the table
    with pytest.raises(ConfigError, match="unknown model 'custom'"):
        ModelConfig(name="custom", embed_dim=96).build()
    with pytest.raises(ConfigError, match="not divisible"):
        ModelConfig(name="custom", embed_dim=96, depth=1, num_heads=5).build()


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="unknown model 'vit_bse'"):
        create_model("vit_bse")
    with pytest.raises(ValueError, match="unknown head"):
        create_model("vit_nano", head="conv")
    model = create_model("vit_nano", **TINY)
    with pytest.raises(ValueError, match="built for"):
        model(clip(size=48))
    with pytest.raises(ValueError, match="not divisible"):
        model(clip(size=36))
    wrong = make_masking("cell_running", 0.5)(2, (4, 2, 2), train=False)
    with pytest.raises(ValueError, match="mask grid"):
        model(clip(), wrong)


def test_pretraining_model_has_no_head_and_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = create_model("vit_nano", **TINY, head="none", decoder=True, drop_path=0.0)
    assert model.head is None
    mask = make_masking("tube", 0.75)(2, model.grid, generator=torch.Generator().manual_seed(0))
    video = clip()
    out = model(video, mask)
    assert out.logits is None and out.pred.shape == out.target.shape
    loss = mar_loss(out, torch.tensor([0, 1]), rec_weight=1.0)
    assert loss.cls == 0 and torch.allclose(loss.total, loss.rec)
    loss.total.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.encoder.grad_checkpointing = True
    mar_loss(model(video, mask), torch.tensor([0, 1]), rec_weight=1.0).total.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters(),
                                                                    strict=True))


def test_xavier_init_is_videomae_pretraining_init():
    """init="xavier": xavier-uniform linears in the encoder and decoder blocks and the
    decoder head, zero biases, PyTorch's default for the patch embedding and decoder.proj
    (VideoMAE's modeling_pretrain); the default keeps std 0.02 linears."""
    kwargs = {"name": "vit_tiny", "num_frames": 4, "img_size": 32, "patch_size": 8,
              "head": "none", "decoder": True}
    torch.manual_seed(0)
    xavier = create_model(**kwargs, init="xavier")
    torch.manual_seed(0)
    normal = create_model(**kwargs)
    qkv = xavier.encoder.blocks[0].attn.qkv.weight                # 192 -> 576
    bound = (6 / (192 + 576)) ** 0.5
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    assert qkv.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert normal.encoder.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    head = xavier.decoder.head.weight
    assert head.abs().max() <= (6 / sum(head.shape)) ** 0.5
    assert not xavier.encoder.blocks[0].mlp.fc1.bias.any()
    assert torch.equal(xavier.encoder.patch_embed.proj.weight,    # same seed, same draw
                       normal.encoder.patch_embed.proj.weight)
    assert xavier.decoder.proj.weight.std() > 0.03                # kaiming-uniform default
    assert xavier.decoder.mask_token.abs().max() <= 0.02
    with pytest.raises(ValueError, match="unknown init"):
        create_model(**kwargs, init="zeros")


def test_our_mlp_is_timms_in_weights_names_and_dropout():
    """The block's MLP is ours (importing timm costs ~2 s of start-up) but must stay
    timm's: same parameter names and init draws, same output with dropout on."""
    from timm.layers import Mlp as TimmMlp

    from mar.models.layers import Mlp

    torch.manual_seed(0)
    ours = Mlp(8, 32, drop=0.2)
    torch.manual_seed(0)
    theirs = TimmMlp(8, 32, act_layer=torch.nn.GELU, drop=0.2)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, 5, 8)
    for mode in (True, False):
        torch.manual_seed(1)
        y = ours.train(mode)(x)
        torch.manual_seed(1)
        assert torch.equal(y, theirs.train(mode)(x))
