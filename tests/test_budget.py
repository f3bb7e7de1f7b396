"""mar.engine.budget, the one copy of the effective batch, the actual LR, the steps and
lambda that the trainer and ``mar recipe`` share: each rule against numbers worked out by
hand, and the module's promise not to import torch."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from mar.engine import budget
from mar.runtime.distributed import ShardSampler


def test_importing_it_imports_no_torch():
    code = ("import sys, mar.engine.budget, mar.recipe; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_effective_batch_counts_every_factor():
    # distinct primes: a factor left out, or one counted twice, gives another number
    assert budget.effective_batch(3, 5, 7, 2) == 210
    assert budget.effective_batch(16, 4, 8, 1) == 512     # Table I, SSv2 ViT-B
    assert budget.effective_batch(8, 4, 8, 2) == 512      # Table I, K400 ViT-B: 2 repeats
    assert budget.effective_batch(8, 1, 8, 2) == 128      # the official K400 ViT-B run


def test_linear_scaling_rule():
    assert budget.REFERENCE_BATCH == 256
    assert budget.scaled_lr(1e-3, 512) == 2e-3            # Table I, ViT-B
    assert budget.scaled_lr(1e-3, 128) == 5e-4            # Table I, ViT-L
    assert budget.scaled_lr(1.5e-4, 2048) == pytest.approx(1.2e-3)   # VideoMAE pretraining
    assert budget.scaled_lr(1e-3, 64, reference=128) == 5e-4


def test_actual_lr_scales_only_when_asked():
    assert budget.actual_lr(1e-3, 512, lr_scaling=True) == 2e-3
    assert budget.actual_lr(1e-3, 512, lr_scaling=False) == 1e-3
    assert budget.actual_lr(2.5e-4, 16, lr_scaling=False) == 2.5e-4


@pytest.mark.parametrize("size,processes,batch,share", [
    (100, 1, 8, 96), (100, 3, 8, 32), (168_913, 8, 16, 21_104), (7, 2, 4, 0), (64, 4, 16, 16)])
def test_videos_per_process_is_the_training_samplers_share(size, processes, batch, share):
    assert budget.videos_per_process(size, processes, batch) == share
    for rank in range(processes):
        sampler = ShardSampler(size, rank, processes, shuffle=True, batch_size=batch)
        assert len(sampler) == share


def test_steps():
    # 21104 videos per process, 16 per micro-batch, 4 micro-batches per step
    assert budget.steps_per_epoch(21_104, 16, 4) == 329
    assert budget.steps_per_epoch(24, 2, 5) == 2          # a part group is no step
    assert budget.steps_per_epoch(15, 16, 1) == 0
    assert budget.total_steps(40, 329) == 13_160
    assert budget.warmup_steps(5, 329) == 1645
    assert budget.warmup_steps(0.25, 10) == 2             # rounded: 2.5 to even
    assert budget.warmup_steps(0.36, 10) == 4             # rounded to whole steps, not down


def test_lambda():
    assert budget.reconstruction_weight("finetune", 0.1) == 0.1
    assert budget.reconstruction_weight("finetune", 0.0) == 0.0
    assert budget.reconstruction_weight("pretrain", 0.1) == 1.0


def _cfg(task="finetune", **train):
    values = dict(batch_size=8, accum_steps=4, base_lr=1e-3, lr_scaling=True, epochs=100,
                  warmup_epochs=5, task=task, rec_weight=0.01) | train
    return SimpleNamespace(train=SimpleNamespace(**values), data=SimpleNamespace(repeats=2))


def test_plan_of_table_i_k400_vit_b():
    # 8 videos x 2 repeats x 4 accumulation x 8 GPUs, on the paper's ~240k K400 videos
    b = budget.plan(_cfg(), 8, budget.videos_per_process(240_000, 8, 8))
    assert (b.processes, b.effective_batch, b.lr, b.rec_weight) == (8, 512, 2e-3, 0.01)
    # 240000 // 64 = 3750 micro-batches per process, // 4 = 937 steps
    assert (b.steps_per_epoch, b.total_steps, b.warmup_steps) == (937, 93_700, 4685)


def test_plan_without_the_dataset_size_has_no_steps():
    b = budget.plan(_cfg(lr_scaling=False, task="pretrain"), 3)
    assert (b.effective_batch, b.lr, b.rec_weight) == (192, 1e-3, 1.0)
    assert (b.steps_per_epoch, b.total_steps, b.warmup_steps) == (None, None, None)
