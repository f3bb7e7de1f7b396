"""TrainStep by hand: accumulation sums micro-batch gradients with the right scale and
updates only when due; with fp16's GradScaler, clipping sees the true gradients.

The model is the shipped SSv2 ViT-B MAR config shrunk (head dropout, drop path,
decoder and cell running masking on)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONFIGS, SHRINK, as_args

from mar.config import load_config
from mar.engine.optim import build_optimizer
from mar.engine.trainer import TrainStep, build_model
from mar.runtime.distributed import DistInfo

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def setup(accum_steps: int, scaler_on: bool = False, clip: float | None = None):
    cfg = load_config(CONFIGS / "ssv2_vit_base_mar50.yaml", as_args(SHRINK))
    assert cfg.model.head_dropout > 0 and cfg.model.drop_path > 0 and cfg.train.rec_weight > 0
    torch.manual_seed(0)
    model = build_model(cfg, CPU)
    optimizer = build_optimizer(model, 1e-3, 0.05, cfg.train.layer_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_on, init_scale=2.0**12)
    step = TrainStep(model, model, optimizer, scaler, cfg.masking.build(),
                     torch.Generator().manual_seed(1), None, rec_weight=cfg.train.rec_weight,
                     label_smoothing=0.1, accum_steps=accum_steps, clip_grad=clip,
                     amp_dtype=None, info=CPU)
    model.train()
    return model, step


def batches(n: int, size: int = 2):
    g = torch.Generator().manual_seed(5)
    return [{"video": torch.randint(0, 256, (size, 3, 4, 32, 32), dtype=torch.uint8,
                                     generator=g),
             "erase": torch.tensor([[4, 6, 10, 12, 7]] + [[0] * 5] * (size - 1)),
             "label": torch.randint(0, 174, (size,), generator=g)} for _ in range(n)]


def grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_accumulation_averages_the_micro_batch_gradients_and_updates_when_due():
    b1, b2 = batches(2)
    acc_model, acc = setup(accum_steps=2)
    before = copy.deepcopy(acc_model.state_dict())
    torch.manual_seed(7)
    assert acc.forward_backward(b1)[1] is False
    assert acc.forward_backward(b2)[1] is True
    accumulated = grads(acc_model)

    one_model, one = setup(accum_steps=1)
    torch.manual_seed(7)  # the same dropout / drop path draws, micro-batch by micro-batch
    one.forward_backward(b1)
    g1 = grads(one_model)
    one_model.zero_grad(set_to_none=True)
    one.forward_backward(b2)
    g2 = grads(one_model)
    assert accumulated.keys() == g1.keys() == g2.keys() and len(accumulated) > 10
    for k in accumulated:
        torch.testing.assert_close(accumulated[k], (g1[k] + g2[k]) / 2, rtol=1e-5,
                                   atol=1e-7, msg=k)

    acc.update(1e-3)
    after = acc_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in acc_model.parameters())


@pytest.mark.parametrize("clip", [None, 0.05])
def test_a_grad_scaler_changes_nothing_but_the_scale_clipping_included(clip):
    (b,) = batches(1)
    results = []
    for scaler_on in (False, True):
        model, step = setup(accum_steps=1, scaler_on=scaler_on, clip=clip)
        torch.manual_seed(3)
        step.forward_backward(b)
        step.update(1e-3)
        results.append(model.state_dict())
    plain, scaled = results
    for k in plain:
        torch.testing.assert_close(scaled[k], plain[k], rtol=1e-4, atol=1e-6, msg=k)
