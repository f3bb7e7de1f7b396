"""The learning rate as a pure function of the optimizer step."""

from __future__ import annotations

import math


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float,
          min_lr: float = 1e-6, warmup_start_lr: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start_lr`` (step 0) to ``base_lr`` (step
    ``warmup_steps``), then a half cosine down to ``min_lr`` at ``total_steps``; ``min_lr``
    after it. VideoMAE warms up from 0, the official MAR code from 1e-6."""
    if step < 0 or warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"steps must be >= 0: step {step}, warmup_steps {warmup_steps}, "
                         f"total_steps {total_steps}")
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
