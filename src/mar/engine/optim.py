"""AdamW with layer-wise learning-rate decay and the linear scaling rule (Table I)."""

from __future__ import annotations

import torch
from torch import nn


def scaled_lr(base_lr: float, effective_batch: int, reference: int = 256) -> float:
    """The paper's rule (Table I footnote): actual LR = base LR x batch size / 256."""
    return base_lr * effective_batch / reference


def num_layers(model: nn.Module) -> int:
    return len(model.encoder.blocks)


def layer_id(name: str, depth: int) -> int:
    """0 for the patch embedding (and top-level tokens), k + 1 for encoder block k,
    depth + 1 for everything after the encoder (final norm, head, decoder)."""
    if name.startswith("encoder.patch_embed") or name in ("mask_token", "cls_token"):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases (incl. q_bias / v_bias), tokens and position parameters."""
    return param.ndim <= 1 or name.endswith(("bias", "mask_token", "cls_token")) or \
        "pos_embed" in name


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                 policy: str = "paper") -> list[dict]:
    """AdamW groups with ``lr_scale`` and ``weight_decay``, merged by their values.

    ``paper``: VideoMAE's rule, which the paper follows: every parameter of layer i gets
    ``layer_decay ** (L + 1 - i)``. ``official``: the official MAR code's behaviour: only
    the encoder's weight matrices are decayed by layer; norms, biases, the head and the
    decoder (its ``mask_token`` included, which lives under ``decoder.`` here, not at the
    top level where the official code gives it the smallest scale) train at full LR.
    """
    if policy not in ("paper", "official"):
        raise ValueError(f"unknown layer-decay policy {policy!r}; known: paper, official")
    depth = num_layers(model)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if no_weight_decay(name, param) else weight_decay
        scale = layer_decay ** (depth + 1 - layer_id(name, depth))
        if policy == "official" and (decay == 0.0 or not name.startswith("encoder.")):
            scale = 1.0
        group = groups.setdefault((scale, decay), {"params": [], "names": [],
                                                   "lr_scale": scale, "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05,
                    layer_decay: float = 0.75, betas=(0.9, 0.999), eps: float = 1e-8,
                    policy: str = "paper") -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay, policy)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    set_lr(optimizer, lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
