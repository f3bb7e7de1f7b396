"""The training budget: clips per optimizer step, the actual LR, steps and lambda.

One copy of each formula, used by the trainer (:func:`mar.engine.trainer.train`) and by
``mar recipe`` (:mod:`mar.recipe`), so that what the recipe reports is what the trainer
does. Torch-free: importing this module imports neither torch nor the training loop.

- effective batch: ``batch_size x accum_steps x processes x repeats`` clips per optimizer
  step (repeated samples of a video count, as Table I's batch does);
- actual LR: ``base_lr x effective batch / 256`` (Table I's footnote, the linear scaling
  rule) when ``lr_scaling`` is on, else ``base_lr`` as is;
- steps per epoch: full micro-batches of ``batch_size`` videos on every process, then full
  accumulation groups; total steps ``epochs x steps per epoch``; warm-up
  ``warmup_epochs x steps per epoch`` rounded to whole steps;
- lambda (the weight of the reconstruction loss): ``train.rec_weight`` when fine-tuning,
  1 when pretraining (reconstruction only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REFERENCE_BATCH = 256  # Table I's footnote: actual LR = base LR x batch size / 256


def effective_batch(batch_size: int, accum_steps: int, processes: int, repeats: int) -> int:
    """Clips per optimizer step: batch x accumulation x processes x repeats."""
    return batch_size * accum_steps * processes * repeats


def scaled_lr(base_lr: float, effective_batch: int, reference: int = REFERENCE_BATCH) -> float:
    """The paper's rule (Table I footnote): actual LR = base LR x batch size / 256."""
    return base_lr * effective_batch / reference


def actual_lr(base_lr: float, effective_batch: int, lr_scaling: bool) -> float:
    """The peak LR the trainer runs: :func:`scaled_lr` when ``lr_scaling``, else as is."""
    return scaled_lr(base_lr, effective_batch) if lr_scaling else base_lr


def videos_per_process(train_size: int, processes: int, batch_size: int) -> int:
    """Training videos one process sees per epoch: the training sampler
    (:class:`mar.runtime.distributed.ShardSampler`, ``shuffle=True``) trims the epoch to a
    multiple of ``processes x batch_size`` and deals it out evenly."""
    return train_size // (processes * batch_size) * batch_size


def steps_per_epoch(videos_per_process: int, batch_size: int, accum_steps: int) -> int:
    """Optimizer steps per epoch: full micro-batches, then full accumulation groups."""
    return videos_per_process // batch_size // accum_steps


def total_steps(epochs: int, steps_per_epoch: int) -> int:
    return epochs * steps_per_epoch


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up in optimizer steps, rounded to whole steps."""
    return round(warmup_epochs * steps_per_epoch)


def reconstruction_weight(task: str, rec_weight: float) -> float:
    """Lambda, the weight of the reconstruction loss in ``lambda x L_rec + L_cls``:
    ``rec_weight`` when fine-tuning, 1 when pretraining (reconstruction is the loss)."""
    return rec_weight if task == "finetune" else 1.0


@dataclass(frozen=True)
class Budget:
    """What one config trains with on ``processes`` processes; the steps are None when
    the number of videos per process is not known."""

    processes: int
    effective_batch: int
    lr: float
    rec_weight: float
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    warmup_steps: int | None = None


def plan(cfg: Any, processes: int, videos_per_process: int | None = None) -> Budget:
    """The :class:`Budget` of ``cfg`` (a :class:`mar.config.Config`; only its ``train`` and
    ``data`` sections are read) on ``processes`` processes. ``videos_per_process``: the
    length of one process's training sampler (:func:`videos_per_process` of the dataset
    size), for the steps."""
    tc, dc = cfg.train, cfg.data
    effective = effective_batch(tc.batch_size, tc.accum_steps, processes, dc.repeats)
    steps = total = warmup = None
    if videos_per_process is not None:
        steps = steps_per_epoch(videos_per_process, tc.batch_size, tc.accum_steps)
        total, warmup = total_steps(tc.epochs, steps), warmup_steps(tc.warmup_epochs, steps)
    return Budget(processes=processes, effective_batch=effective,
                  lr=actual_lr(tc.base_lr, effective, tc.lr_scaling),
                  rec_weight=reconstruction_weight(tc.task, tc.rec_weight),
                  steps_per_epoch=steps, total_steps=total, warmup_steps=warmup)
