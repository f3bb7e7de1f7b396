"""Transformer layers shared by the encoder, the bridging classifier and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention, (B, N, D) -> (B, N, D).

    As VideoMAE: one ``qkv`` projection without bias plus separate ``q_bias`` and
    ``v_bias``. A key bias would be dead weight: it adds the same value to every score of
    a query row, which the softmax removes.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, each (B, heads, N, head_dim)."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        return qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.attend(x, bias)[0]

    def attend(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The attention output (B, N, D) and the keys (B, heads, N, head_dim).

        ``bias`` (B, 1, 1, N) is added to every query's logits: ``log(size)`` gives ToMe's
        proportional attention, ``-inf`` hides a padded key (see ``token_reduction``).
        ``None`` is the plain model. The keys are ToMe's similarity metric.
        """
        b, n, d = x.shape
        q, k, v = self.qkv_heads(x)
        if bias is not None:
            bias = bias.to(q.dtype)  # under autocast q is bf16 / fp16
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(x)), k


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, with timm's ``Mlp`` parameter names. Ours
    so that building a model does not import timm, whose layers import torchvision's
    models and ``torch._dynamo``: about 2 s of every command's start-up."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def drop_path_layer(p: float) -> nn.Module:
    """timm's stochastic depth, imported only for a model that trains with it."""
    if p == 0:
        return nn.Identity()
    from timm.layers import DropPath

    return DropPath(p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = drop_path_layer(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``bias``: an additive attention bias over the keys, as :meth:`Attention.attend`."""
        x = x + self.drop_path(self.attn(self.norm1(x), bias))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_xavier(module: nn.Module) -> None:
    """VideoMAE's *pretraining* init: xavier-uniform linears with zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_vit_weights(module: nn.Module) -> None:
    """VideoMAE's init: truncated normal (std 0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
