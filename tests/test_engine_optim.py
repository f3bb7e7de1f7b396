import math

import pytest
import torch

from mar import create_model
from mar.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from mar.engine.optim import build_optimizer, param_groups, scaled_lr, set_lr
from mar.engine.schedule import lr_at

TINY = dict(num_classes=5, num_frames=8, img_size=32, patch_size=8, decoder=True)


def scales(groups) -> dict[str, tuple[float, float]]:
    return {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_layer_decay_paper_policy_by_hand():
    model = create_model("vit_nano", **TINY)  # 4 blocks: L = 4, ids 0..5
    s = scales(param_groups(model, 0.05, 0.75, "paper"))
    assert s["encoder.patch_embed.proj.weight"] == (0.75**5, 0.05)
    assert s["encoder.patch_embed.proj.bias"] == (0.75**5, 0.0)
    assert s["encoder.blocks.0.attn.qkv.weight"] == (0.75**4, 0.05)
    assert s["encoder.blocks.0.attn.q_bias"] == (0.75**4, 0.0)
    assert s["encoder.blocks.3.norm1.weight"] == (0.75**1, 0.0)
    assert s["encoder.blocks.3.mlp.fc2.weight"] == (0.75**1, 0.05)
    for name in ("encoder.norm.weight", "head.head.weight", "decoder.blocks.0.attn.qkv.weight"):
        assert s[name][0] == 1.0
    assert s["decoder.mask_token"] == (1.0, 0.0)
    # every trainable parameter exactly once
    names = [n for g in param_groups(model, 0.05, 0.75) for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_layer_decay_official_policy_only_scales_encoder_weight_matrices():
    model = create_model("vit_nano", **TINY)
    s = scales(param_groups(model, 0.05, 0.75, "official"))
    assert s["encoder.blocks.0.attn.qkv.weight"] == (0.75**4, 0.05)
    assert s["encoder.patch_embed.proj.weight"] == (0.75**5, 0.05)
    assert s["encoder.blocks.0.attn.q_bias"] == (1.0, 0.0)
    assert s["encoder.blocks.0.norm1.weight"] == (1.0, 0.0)
    assert s["head.blocks.0.attn.qkv.weight"] == (1.0, 0.05)
    with pytest.raises(ValueError, match="unknown layer-decay policy"):
        param_groups(model, 0.05, 0.75, "vmae")


def test_optimizer_applies_scaled_lrs():
    model = create_model("vit_nano", **TINY)
    opt = build_optimizer(model, 1e-3, 0.05, 0.5)
    set_lr(opt, 2e-3)
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == \
        sorted({round(2e-3 * 0.5**k, 12) for k in range(6)})
    assert scaled_lr(1e-3, 512) == pytest.approx(2e-3)
    assert scaled_lr(5e-4, 64) == pytest.approx(1.25e-4)


def test_schedule_by_hand():
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1.0, min_lr=0.0)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.5)  # half way through the cosine
    assert lr_at(100, **kw) == pytest.approx(0.0) and lr_at(150, **kw) == pytest.approx(0.0)
    assert lr_at(0, **{**kw, "warmup_start_lr": 1e-6}) == pytest.approx(1e-6)
    assert lr_at(40, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 90)))
    after = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = create_model("vit_nano", num_classes=3, num_frames=4, img_size=16, patch_size=8)
    opt = build_optimizer(model, 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, opt, scaler


def _step(model, opt):
    x = torch.randn(2, 3, 4, 16, 16)
    loss = model(x).logsumexp(1).mean() + 0.01 * torch.randn(())  # uses the global RNG
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_resume_continues_exactly(tmp_path):
    model, opt, scaler = _setup()
    _step(model, opt)
    save_checkpoint(tmp_path, 1, model, opt, scaler, epoch=0, sampler_epoch=0, config={},
                    metrics={})
    expected = [_step(model, opt) for _ in range(2)]
    model2, opt2, scaler2 = _setup(seed=123)
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, scaler2)
    restore_rng(state["rng"])
    assert state["step"] == 1
    assert [_step(model2, opt2) for _ in range(2)] == expected
    # the state file needs no pickled code
    torch.load(tmp_path / "checkpoint-00000001" / "state.pt", weights_only=True)


def test_keep_last_and_best(tmp_path):
    model, opt, scaler = _setup()
    for step, acc in [(1, 10.0), (2, 30.0), (3, 20.0), (4, 25.0)]:
        save_checkpoint(tmp_path, step, model, opt, scaler, epoch=0, sampler_epoch=0,
                        config={}, metrics={"acc": acc}, keep_last=2, best_metric=acc)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == \
        ["checkpoint-00000003", "checkpoint-00000004"]
    best = torch.load(tmp_path / "best" / "state.pt", weights_only=True)
    assert best["step"] == 2 and best["metrics"]["best_metric"] == 30.0


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, scaler = _setup()
    save_checkpoint(tmp_path, 1, model, opt, scaler, epoch=0, sampler_epoch=0, config={},
                    metrics={})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, opt, scaler, epoch=0, sampler_epoch=0,
                        config={}, metrics={})
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000001"
    assert not list(tmp_path.glob(".tmp-*"))
    # a half-written directory left by a kill is not a checkpoint
    (tmp_path / "checkpoint-00000009").mkdir()
    (tmp_path / ".tmp-checkpoint-00000010-abcd").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000001"
    assert not (tmp_path / ".tmp-checkpoint-00000010-abcd").exists()


def test_mismatched_model_and_run_dir_protection(tmp_path):
    model, opt, scaler = _setup()
    path = save_checkpoint(tmp_path / "run", 1, model, opt, scaler, epoch=0, sampler_epoch=0,
                           config={}, metrics={})
    other = create_model("vit_nano", num_classes=7, num_frames=4, img_size=16, patch_size=8)
    with pytest.raises(ValueError, match=r"shape mismatch: head.head.weight"):
        load_checkpoint(path, other)
    with pytest.raises(FileExistsError, match="--resume auto"):
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    prepare_run_dir(tmp_path / "run", resume=True, overwrite=False)
    assert latest_checkpoint(tmp_path / "run") is not None
    prepare_run_dir(tmp_path / "run", resume=False, overwrite=True)
    assert latest_checkpoint(tmp_path / "run") is None
    assert isinstance(rng_state()["python"], tuple)
