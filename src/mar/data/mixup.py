"""Batch-level mixup / cutmix for clips, with label smoothing (Table I, Table X)."""

from __future__ import annotations

from torch import Tensor


class VideoMixup:
    """timm's ``Mixup`` (batch mode) applied to clips (B, C, T, H, W).

    The clip is viewed as (B, C*T, H, W), so a cutmix box covers the same pixels in
    every frame and mixup mixes whole clips. Returns soft targets (B, K) that include
    label smoothing. Draws from NumPy's global generator, as timm does: seed it once at
    the start of a run for reproducibility. The batch size must be even.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
                           switch_prob=switch_prob, mode="batch",
                           label_smoothing=label_smoothing, num_classes=num_classes)

    def __call__(self, video: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if video.shape[0] % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {video.shape[0]}")
        b, c, t, h, w = video.shape
        frames = video.reshape(b, c * t, h, w).clone()
        frames, soft = self.mixup(frames, target)
        return frames.view(b, c, t, h, w), soft
