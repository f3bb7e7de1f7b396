"""Tubelet embedding, the fixed position table, and the patch layout of reconstruction targets.

All three read the same patch and tubelet sizes, so they live together. Tokens are in
(t, h, w) order, t slowest.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD


class PatchEmbed3D(nn.Module):
    """Non-overlapping tubelets to tokens: (B, C, T, H, W) -> (B, N, D)."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: int = 16,
                 tubelet_size: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=size, stride=size)

    def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a clip; the sizes must divide evenly."""
        t, p = self.tubelet_size, self.patch_size
        if num_frames % t or height % p or width % p:
            raise ValueError(f"clip of {num_frames}x{height}x{width} (T x H x W) is not "
                             f"divisible into {t}x{p}x{p} tubelets")
        return num_frames // t, height // p, width // p

    def forward(self, x: Tensor) -> Tensor:
        self.grid(*x.shape[2:])
        return self.proj(x).flatten(2).transpose(1, 2)


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's fixed position table over flattened (t, h, w) indices: (1, N, D).

    Angle pos / 10000^(2 * (j // 2) / D); sine on even channels, cosine on odd ones.
    Computed in float64 on the CPU and returned as float32 on the default device: under
    ``torch.device("meta")`` torch's meta kernels for these ops would import
    ``torch._dynamo`` (a second of start-up).
    """
    pos = torch.arange(num_positions, dtype=torch.float64, device="cpu").unsqueeze(1)
    j = torch.arange(dim, device="cpu")
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).to(torch.float64) / dim)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32).unsqueeze(0).to(torch.get_default_device())


def patchify(video: Tensor, patch_size: int, tubelet_size: int) -> Tensor:
    """(B, C, T, H, W) -> (B, N, t*p*p*C), values ordered (t, p, p, C), channel fastest."""
    return rearrange(video, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)",
                     p0=tubelet_size, p1=patch_size, p2=patch_size)


def unpatchify(patches: Tensor, grid: tuple[int, int, int], patch_size: int,
               tubelet_size: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, t*p*p*C) -> (B, C, T, H, W)."""
    t, h, w = grid
    return rearrange(patches, "b (t h w) (p0 p1 p2 c) -> b c (t p0) (h p1) (w p2)",
                     t=t, h=h, w=w, p0=tubelet_size, p1=patch_size, p2=patch_size)


def reconstruction_target(video: Tensor, patch_size: int, tubelet_size: int,
                          mean: tuple[float, ...] = IMAGENET_MEAN,
                          std: tuple[float, ...] = IMAGENET_STD,
                          normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """Pixels the decoder predicts: (B, C, T, H, W) normalised input -> (B, N, t*p*p*C).

    The input is un-normalised with ``mean``/``std`` first. With ``normalize`` each patch
    is standardised per channel over its t*p*p pixels: (x - mean) / (unbiased std + eps)
    (paper Table VIII, VideoMAE's target).
    """
    video = video.float()
    shape = (1, -1, 1, 1, 1)
    pixels = video * video.new_tensor(std).view(shape) + video.new_tensor(mean).view(shape)
    patches = rearrange(pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                        p0=tubelet_size, p1=patch_size, p2=patch_size)
    if normalize:
        mu = patches.mean(dim=-2, keepdim=True)
        sigma = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        patches = (patches - mu) / (sigma + eps)
    return patches.flatten(2)
