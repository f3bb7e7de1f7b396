"""The reconstruction decoder, used in training only (paper §III-A, eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..masking import Mask, gather_tokens
from .layers import Block, init_vit_weights, init_xavier
from .patch_embed import sinusoid_table


class ReconstructionDecoder(nn.Module):
    """Predicts the pixels of the masked tubelets: (B, N_visible, D), Mask -> (B, N_masked, P).

    As VideoMAE's pretraining decoder: ``proj`` (VideoMAE's ``encoder_to_decoder``, no
    bias) to the decoder width, a learned ``mask_token`` for every masked slot, a fixed
    sinusoid table added to all tokens, blocks, then ``norm`` and ``head`` on the masked
    tokens only. P = tubelet * patch * patch * channels. Rows follow ``mask.ids_mask``.
    """

    def __init__(self, in_dim: int, num_tokens: int, out_dim: int, embed_dim: int = 384,
                 depth: int = 4, num_heads: int = 6, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, init: str = "trunc_normal"):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sinusoid_table(num_tokens, embed_dim),
                             persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, norm_eps=norm_eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, out_dim)
        if init == "xavier":  # VideoMAE pretraining: proj keeps PyTorch's default
            self.blocks.apply(init_xavier)
            init_xavier(self.head)
            nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        else:
            self.apply(init_vit_weights)
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: Tensor, mask: Mask) -> Tensor:
        x = self.proj(x)                                     # (B, N_visible, Dd)
        pos = self.pos_embed.expand(x.shape[0], -1, -1)
        visible = x + gather_tokens(pos, mask.ids_keep)
        masked = self.mask_token + gather_tokens(pos, mask.ids_mask)
        x = torch.cat((visible, masked), dim=1)              # (B, N, Dd)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, mask.num_visible:]))
