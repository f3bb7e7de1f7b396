"""The video ViT encoder: every patch is embedded, only the visible tokens enter the blocks."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..masking import Mask, gather_tokens
from .layers import Block, init_vit_weights, init_xavier
from .patch_embed import PatchEmbed3D, sinusoid_table


class VideoEncoder(nn.Module):
    """VideoMAE-compatible ViT: (B, C, T, H, W), Mask -> (B, N_visible, D).

    Parameter names follow VideoMAE (``patch_embed.proj``, ``blocks.{i}.attn.qkv``,
    ``norm``) so its weights load by renaming prefixes only. The position table is a
    fixed buffer, not a parameter, and is not saved.
    """

    def __init__(self, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                 tubelet_size: int = 2, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, final_norm: bool = True,
                 norm_eps: float = 1e-6, init: str = "trunc_normal"):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed3D(in_chans, embed_dim, patch_size, tubelet_size)
        self.grid = self.patch_embed.grid(num_frames, img_size, img_size)
        self.register_buffer("pos_embed", sinusoid_table(math.prod(self.grid), embed_dim),
                             persistent=False)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # 0 -> rate
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r, norm_eps=norm_eps)
            for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self.grad_checkpointing = False  # recompute block activations in backward
        # init: "trunc_normal" (VideoMAE fine-tuning) or "xavier" (VideoMAE pretraining);
        # the patch embedding keeps PyTorch's Conv3d default either way, as VideoMAE
        self.apply(init_xavier if init == "xavier" else init_vit_weights)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def embed(self, video: Tensor) -> Tensor:
        """Every tubelet embedded, position added: (B, C, T, H, W) -> (B, N, D)."""
        grid = self.patch_embed.grid(*video.shape[2:])
        if grid != self.grid:
            raise ValueError(f"clip {tuple(video.shape[2:])} gives token grid {grid}, but the "
                             f"encoder was built for {self.grid}")
        return self.patch_embed(video) + self.pos_embed

    def forward(self, video: Tensor, mask: Mask | None = None) -> Tensor:
        x = self.embed(video)                              # (B, N, D)
        if mask is not None and mask.num_masked:
            if mask.grid != self.grid:
                raise ValueError(f"mask grid {mask.grid} does not match the encoder's "
                                 f"{self.grid}")
            x = gather_tokens(x, mask.ids_keep)            # (B, N_visible, D)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)
