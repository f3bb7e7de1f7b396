"""AdamW with layer-wise learning-rate decay and the linear scaling rule (Table I).

Layer ids, with L encoder blocks: the patch embedding and any top-level token or position
parameter are 0, ``encoder.blocks.k`` is k + 1, everything else (the encoder's final
norm, the head, the decoder) is L + 1. Layer i trains at ``layer_decay ** (L + 1 - i)``
times the LR. Two policies say which parameters follow their layer:

- ``paper``: VideoMAE's rule (``optim_factory.py``), which the paper says it follows:
  every parameter of a layer, norms and biases included.
- ``official``: what the official MAR code does (``models/utils/optimizer.py``, reference
  §1.7): only the backbone's weight matrices (patch embedding, block linears) follow their
  layer; norms, biases (``q_bias``/``v_bias`` included), the head and the decoder train at
  scale 1. The one exception is ``decoder.mask_token``: it is the parameter the official
  model calls ``mask_token`` (top level, shape (1, 1, decoder width), loaded from the
  VideoMAE pretraining checkpoint), and its name matches VideoMAE's layer-0 list, so the
  official runs train it at the smallest scale, ``layer_decay ** (L + 1)``. We keep that:
  this policy exists to reproduce those runs, and the token sits under ``decoder.`` here
  only because our decoder owns it. ``head.mask_token`` is the official
  ``cls_head.mask_token`` ("head" group, scale 1).

Weight decay, both policies: none for 1-D parameters (norms, biases) and for tokens and
position parameters. (The official code does decay its ``mask_token`` by 0.05; we do not,
as VideoMAE and MAE never decay tokens.)
"""

from __future__ import annotations

import torch
from torch import nn

from .budget import scaled_lr as scaled_lr  # the linear scaling rule; it lives in budget.py

POLICIES = ("paper", "official")
TOP_LEVEL_LAYER0 = ("cls_token", "mask_token", "pos_embed")
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")  # last component of the name


def layer_id(name: str, depth: int) -> int:
    """0 for the patch embedding and top-level tokens, k + 1 for ``encoder.blocks.k``,
    ``depth + 1`` for everything after the encoder blocks."""
    if name.startswith("encoder.patch_embed.") or name in TOP_LEVEL_LAYER0:
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms and biases (1-D, ``q_bias``/``v_bias`` included), tokens, position tables."""
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def official_layer_id(name: str, param: torch.Tensor, depth: int) -> int:
    """The official MAR code's layer: only backbone weight matrices keep theirs."""
    if name == "decoder.mask_token":  # the official top-level ``mask_token``
        return 0
    if name.startswith(("encoder.patch_embed.", "encoder.blocks.")) and param.ndim > 1:
        return layer_id(name, depth)
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                 policy: str = "paper") -> list[dict]:
    """AdamW groups with ``lr_scale``, ``weight_decay`` and the parameter ``names``, one
    group per distinct (lr_scale, weight_decay). Frozen parameters are left out."""
    if policy not in POLICIES:
        raise ValueError(f"unknown layer-decay policy {policy!r}; known: {', '.join(POLICIES)}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = len(model.encoder.blocks)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if no_weight_decay(name, param) else weight_decay
        layer = (official_layer_id(name, param, depth) if policy == "official"
                 else layer_id(name, depth))
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault((scale, decay), {"params": [], "names": [],
                                                   "lr_scale": scale, "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05,
                    layer_decay: float = 0.75, betas=(0.9, 0.999), eps: float = 1e-8,
                    policy: str = "paper", fused: bool = False) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, each group's LR already ``lr * lr_scale``;
    ``fused``: one kernel for every parameter (what a GPU run uses)."""
    groups = param_groups(model, weight_decay, layer_decay, policy)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps,
                                  **({"fused": True} if fused else {}))
    set_lr(optimizer, lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr * group["lr_scale"]`` (call once per step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
