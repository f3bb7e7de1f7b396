"""MAR's training objective (paper eqs. 3-5): L = lambda * L_rec + L_cls."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .models.mar import MAROutput


class LossTerms(NamedTuple):
    total: Tensor
    cls: Tensor
    rec: Tensor


def classification_loss(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against class indices (B,) or soft targets (B, K) such as mixup's."""
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"soft targets {tuple(target.shape)} do not match logits "
                             f"{tuple(logits.shape)}")
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def reconstruction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the masked tubelets' pixels, (B, N_masked, P) each.

    With nothing masked there is nothing to reconstruct and the loss is 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in shape")
    if pred.numel() == 0:
        return pred.sum().float()
    return F.mse_loss(pred.float(), target.float())


def mar_loss(output: MAROutput | Tensor, target: Tensor, rec_weight: float = 0.1,
             label_smoothing: float = 0.0) -> LossTerms:
    """lambda * L_rec + L_cls. ``output`` is the model's :class:`MAROutput` (without
    logits when pretraining: L_cls = 0; without a prediction when the model has no
    decoder: L_rec = 0) or logits alone.

    The official configs use lambda = 0.1 for Something-Something v2, 0.01 for Kinetics-400.
    """
    if isinstance(output, MAROutput) and output.pred is not None:
        rec = reconstruction_loss(output.pred, output.target)
        cls = (rec.new_zeros(()) if output.logits is None
               else classification_loss(output.logits, target, label_smoothing))
    else:
        logits = output.logits if isinstance(output, MAROutput) else output
        cls = classification_loss(logits, target, label_smoothing)
        rec = cls.new_zeros(())
    return LossTerms(cls + rec_weight * rec, cls, rec)
