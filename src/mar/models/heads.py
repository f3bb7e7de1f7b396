"""Classification heads over the encoder's visible tokens: (B, N_visible, D), Mask -> (B, K).

``linear`` is VideoMAE's head; ``bridging`` is MAR's bridging classifier (paper §III-C,
Tables VI-VII); ``mlp`` is the MLP ablation of Table VI.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..masking import Mask, gather_tokens
from .layers import Block, init_xavier
from .patch_embed import sinusoid_table


class LinearHead(nn.Module):
    """VideoMAE's head: mean over tokens -> ``fc_norm`` -> dropout -> ``head``."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0,
                 init_scale: float = 0.001, norm_eps: float = 1e-6):
        super().__init__()
        self.fc_norm = nn.LayerNorm(in_dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)

    def forward(self, x: Tensor, mask: Mask | None = None) -> Tensor:
        return self.head(self.dropout(self.fc_norm(x.mean(1))))


class MLPHead(nn.Module):
    """Table VI's MLP: the bridging classifier with its transformer blocks replaced by
    ``depth`` Linear + GELU layers on the pooled feature.

    proj (no bias, per token) -> mean -> [Linear, GELU] x depth -> norm -> dropout -> head.
    """

    def __init__(self, in_dim: int, num_classes: int, width: int = 512, depth: int = 2,
                 dropout: float = 0.1, norm_eps: float = 1e-6):
        super().__init__()
        self.proj = nn.Linear(in_dim, width, bias=False)
        self.mlp = nn.Sequential(*(m for _ in range(depth)
                                   for m in (nn.Linear(width, width), nn.GELU())))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.mlp.apply(init_xavier)
        init_xavier(self.head)

    def forward(self, x: Tensor, mask: Mask | None = None) -> Tensor:
        x = self.mlp(self.proj(x).mean(1))
        return self.head(self.dropout(self.norm(x)))


class BridgingHead(nn.Module):
    """MAR's bridging classifier.

    proj (no bias) -> transformer blocks over the visible tokens -> mean -> norm ->
    dropout -> head. By default (the paper's best, Table VII) it adds no position
    embedding and no mask tokens. ``mask_tokens=True`` fills the masked slots with a
    learned token so the blocks run on all N tokens; ``pos_embed=True`` adds a fixed
    sinusoid table of the head's width at each token's position.
    """

    def __init__(self, in_dim: int, num_classes: int, width: int = 512, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 pos_embed: bool = False, mask_tokens: bool = False,
                 num_tokens: int | None = None, norm_eps: float = 1e-6):
        super().__init__()
        self.proj = nn.Linear(in_dim, width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if mask_tokens else None
        if pos_embed:
            if num_tokens is None:
                raise ValueError("bridging head: pos_embed needs num_tokens")
            self.register_buffer("pos_embed", sinusoid_table(num_tokens, width),
                                 persistent=False)
        else:
            self.pos_embed = None
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, norm_eps=norm_eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.blocks.apply(init_xavier)
        init_xavier(self.head)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: Tensor, mask: Mask | None = None) -> Tensor:
        x = self.proj(x)                                          # (B, N_visible, W)
        b, n_vis, w = x.shape
        if self.mask_token is not None and mask is not None and mask.num_masked:
            # under autocast x is bf16 / fp16 while the learned token stays float32
            full = self.mask_token.to(x.dtype).expand(b, mask.num_tokens, w)
            ids = mask.ids_keep.unsqueeze(-1).expand(-1, -1, w)
            x = full.scatter(1, ids, x)                           # (B, N, W)
            if self.pos_embed is not None:
                x = x + self.pos_embed
        elif self.pos_embed is not None:
            pos = self.pos_embed.expand(b, -1, -1)
            x = x + (gather_tokens(pos, mask.ids_keep) if mask is not None else pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.dropout(self.norm(x.mean(1))))
