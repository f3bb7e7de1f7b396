"""Layer-wise LR decay groups, the linear scaling rule and the LR schedule, by hand."""

import math

import pytest

from mar import create_model
from mar.engine.optim import build_optimizer, param_groups, scaled_lr, set_lr
from mar.engine.schedule import lr_at

TINY = dict(num_classes=5, num_frames=8, img_size=32, patch_size=8, decoder=True)
D = 0.75
# vit_nano has L = 4 blocks: patch embedding 0.75**5, block k 0.75**(4 - k), the rest 1
BLOCK_SCALE = {0: D**4, 1: D**3, 2: D**2, 3: D**1}
WEIGHT_MATRICES = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


def table(groups) -> dict[str, tuple[float, float]]:
    """name -> (lr_scale, weight_decay); fails if a name is in two groups."""
    out = {}
    for g in groups:
        assert len(g["names"]) == len(g["params"])
        for name in g["names"]:
            assert name not in out, f"{name} is in two groups"
            out[name] = (g["lr_scale"], g["weight_decay"])
    return out


def model(**kw):
    return create_model("vit_nano", **{**TINY, **kw})


def test_paper_policy_scales_every_parameter_of_a_layer():
    m = model(head_mask_tokens=True)
    got = table(param_groups(m, 0.05, D, "paper"))
    assert set(got) == {n for n, _ in m.named_parameters()}
    for name in got:
        if name.startswith("encoder.patch_embed."):
            scale = D**5
        elif name.startswith("encoder.blocks."):
            scale = BLOCK_SCALE[int(name.split(".")[2])]
        else:  # encoder.norm, head.*, decoder.* (decoder.mask_token included)
            scale = 1.0
        assert got[name][0] == scale, name
    assert got["encoder.patch_embed.proj.weight"] == (D**5, 0.05)
    assert got["encoder.patch_embed.proj.bias"] == (D**5, 0.0)
    assert got["encoder.blocks.0.attn.qkv.weight"] == (D**4, 0.05)
    assert got["encoder.blocks.0.attn.q_bias"] == (D**4, 0.0)
    assert got["encoder.blocks.3.norm1.weight"] == (D, 0.0)
    assert got["encoder.norm.weight"] == (1.0, 0.0)
    assert got["head.head.weight"] == (1.0, 0.05)
    assert got["decoder.mask_token"] == (1.0, 0.0)


def test_official_policy_only_scales_backbone_weight_matrices():
    m = model(head_mask_tokens=True)
    got = table(param_groups(m, 0.05, D, "official"))
    assert set(got) == {n for n, _ in m.named_parameters()}
    for name, p in m.named_parameters():
        if name == "encoder.patch_embed.proj.weight":
            expected = (D**5, 0.05)
        elif name.startswith("encoder.blocks.") and name.endswith(WEIGHT_MATRICES):
            expected = (BLOCK_SCALE[int(name.split(".")[2])], 0.05)
        elif name == "decoder.mask_token":  # the official top-level mask_token: layer 0
            expected = (D**5, 0.0)
        else:  # norms, biases (q_bias/v_bias too), head, the rest of the decoder
            expected = (1.0, 0.0 if p.ndim == 1 or name.endswith("mask_token") else 0.05)
        assert got[name] == expected, name
    assert got["encoder.blocks.2.attn.v_bias"] == (1.0, 0.0)
    assert got["head.mask_token"] == (1.0, 0.0)
    assert got["decoder.blocks.0.attn.qkv.weight"] == (1.0, 0.05)


@pytest.mark.parametrize("policy", ["paper", "official"])
def test_no_weight_decay_is_exactly_the_1d_parameters_and_tokens(policy):
    m = model(head_mask_tokens=True)
    got = table(param_groups(m, 0.05, D, policy))
    no_decay = {n for n, (_, wd) in got.items() if wd == 0.0}
    expected = {n for n, p in m.named_parameters() if p.ndim == 1}
    assert no_decay == expected | {"decoder.mask_token", "head.mask_token"}
    assert {wd for _, wd in got.values()} == {0.0, 0.05}


def test_groups_are_merged_and_frozen_parameters_left_out():
    m = model()
    m.encoder.patch_embed.proj.weight.requires_grad_(False)
    for policy in ("paper", "official"):
        groups = param_groups(m, 0.05, D, policy)
        keys = [(g["lr_scale"], g["weight_decay"]) for g in groups]
        assert len(keys) == len(set(keys))
        names = [n for g in groups for n in g["names"]]
        assert len(names) == len(set(names))
        assert set(names) == {n for n, p in m.named_parameters() if p.requires_grad}
        assert "encoder.patch_embed.proj.weight" not in names
    # paper: 6 scales x (decay, no decay), less the frozen patch-embedding weight's group
    assert len(param_groups(m, 0.05, D, "paper")) == 11
    # official: 4 block scales (decay), decoder.mask_token (0.75**5), 1.0 x (decay, no decay)
    assert len(param_groups(m, 0.05, D, "official")) == 7


def test_official_policy_does_not_depend_on_the_weight_decay_value():
    m = model()
    got = table(param_groups(m, 0.0, D, "official"))
    assert got["encoder.blocks.1.mlp.fc1.weight"] == (D**3, 0.0)
    assert got["encoder.blocks.1.mlp.fc1.bias"] == (1.0, 0.0)


def test_bad_policy_or_decay_is_an_error():
    with pytest.raises(ValueError, match="unknown layer-decay policy 'vmae'"):
        param_groups(model(), 0.05, D, "vmae")
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model(), 0.05, 1.5)


def test_optimizer_groups_carry_their_scale_and_set_lr_applies_it():
    m = model()
    opt = build_optimizer(m, 1e-3, 0.05, 0.5, betas=(0.9, 0.95), eps=1e-6)
    assert all(g["lr"] == 1e-3 * g["lr_scale"] for g in opt.param_groups)
    set_lr(opt, 2e-3)
    assert sorted({g["lr"] for g in opt.param_groups}) == sorted(2e-3 * 0.5**k for k in range(6))
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert by_name["encoder.patch_embed.proj.weight"]["lr"] == 2e-3 * 0.5**5
    assert by_name["head.head.weight"]["lr"] == 2e-3
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-6


def test_linear_scaling_rule():
    assert scaled_lr(1e-3, 512) == 2e-3
    assert scaled_lr(1e-3, 256) == 1e-3
    assert scaled_lr(5e-4, 64) == pytest.approx(1.25e-4)
    assert scaled_lr(1e-3, 64, reference=128) == pytest.approx(5e-4)


def test_schedule_by_hand():
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1e-3, min_lr=1e-5)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(5e-4)  # mid warm-up
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # end of warm-up: the peak
    assert lr_at(55, **kw) == pytest.approx((1e-3 + 1e-5) / 2)  # half way down the cosine
    assert lr_at(40, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.75)  # cos(pi/3) = 1/2
    last = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 89 / 90))
    assert lr_at(99, **kw) == pytest.approx(last)  # the last training step
    assert lr_at(100, **kw) == pytest.approx(1e-5)
    assert lr_at(150, **kw) == pytest.approx(1e-5)  # clamped past the end
    official = {**kw, "warmup_start_lr": 1e-6}
    assert lr_at(0, **official) == 1e-6
    assert lr_at(5, **official) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at(0, **{**kw, "warmup_steps": 0}) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        lr_at(-1, **kw)


def test_schedule_rises_then_falls():
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1.0, min_lr=0.0)
    lrs = [lr_at(s, **kw) for s in range(101)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a > b for a, b in zip(lrs[10:100], lrs[11:101], strict=True))
    assert max(lrs) == lrs[10] == 1.0
