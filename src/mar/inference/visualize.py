"""Pictures of what the model sees: masks (paper Fig. 3-4) and reconstructions (Fig. 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..masking import Mask, MaskingStrategy
from ..models import MAR, patchify, unpatchify


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mask_picture(strategies: dict[str, MaskingStrategy], grid: tuple[int, int, int],
                 path: str | Path, train: bool = False, seed: int = 0,
                 frames: int | None = None) -> Path:
    """One row per strategy, one column per token frame: masked tokens dark, visible
    light, the running cells' borders drawn when the strategy has a cell."""
    plt = _plt()
    t = min(frames or grid[0], grid[0])
    fig, axes = plt.subplots(len(strategies), t, figsize=(1.3 * t + 1.5, 1.4 * len(strategies)),
                             squeeze=False)
    for row, (name, strategy) in enumerate(strategies.items()):
        mask = strategy(1, grid, train=train, generator=torch.Generator().manual_seed(seed))
        m = mask.bool().view(*grid).numpy()
        for col in range(t):
            ax = axes[row, col]
            ax.imshow(~m[col], cmap="gray", vmin=-0.6, vmax=1.2, interpolation="nearest")
            cell = getattr(strategy, "cell", None)
            if cell and tuple(cell) != (grid[1], grid[2]):
                for y in np.arange(0, grid[1] + 1, cell[0]) - 0.5:
                    ax.axhline(y, color="tab:orange", lw=0.6)
                for x in np.arange(0, grid[2] + 1, cell[1]) - 0.5:
                    ax.axvline(x, color="tab:orange", lw=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={col}", fontsize=8)
        axes[row, 0].set_ylabel(f"{name}\n{1 - mask.num_visible / mask.num_tokens:.0%}",
                                fontsize=8)
    fig.suptitle("masked tokens (dark) per token frame", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def reconstruct(model: MAR, video: Tensor, mask: Mask,
                need_decoder: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """(1, C, T, H, W) normalised clip -> original, masked (masked tokens grey) and
    reconstructed clips as (T, H, W, C) uint8. Masked patches of the reconstruction are
    the decoder's predictions; with normalised-pixel targets they are mapped back with
    the original patch's mean and std, as VideoMAE's visualisation does. A model without
    a decoder is an error, or, with ``need_decoder=False``, gives no reconstruction
    (None)."""
    if model.decoder is None and need_decoder:
        raise ValueError("the model has no reconstruction decoder (train or convert it with "
                         "decoder=True)")
    model.eval()
    pe = model.encoder.patch_embed
    p, t = pe.patch_size, pe.tubelet_size
    mean = video.new_tensor(model.pixel_mean).view(1, -1, 1, 1, 1)
    std = video.new_tensor(model.pixel_std).view(1, -1, 1, 1, 1)
    pixels = (video * std + mean).clamp(0, 1)
    patches = patchify(pixels, p, t)[0]                         # (N, t*p*p*C)
    hidden = patches.clone()
    hidden[mask.ids_mask[0]] = 0.5
    grid = model.grid

    def frames(x):
        clip = unpatchify(x[None], grid, p, t)[0].clamp(0, 1)   # (C, T, H, W)
        return (clip.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).cpu()

    if model.decoder is None:
        return frames(patches), frames(hidden), None
    pred = model(video, mask).pred[0]                           # (N_masked, t*p*p*C)
    c = video.shape[1]
    if model.norm_target:
        original = patches[mask.ids_mask[0]].view(-1, t * p * p, c)
        mu = original.mean(1, keepdim=True)
        sigma = original.var(1, unbiased=True, keepdim=True).sqrt() + 1e-6
        pred = (pred.view(-1, t * p * p, c) * sigma + mu).flatten(1)
    rebuilt = patches.clone()
    rebuilt[mask.ids_mask[0]] = pred.to(rebuilt.dtype)
    return frames(patches), frames(hidden), frames(rebuilt)


def reconstruction_figure(original: Tensor, masked: Tensor, rebuilt: Tensor,
                          png: str | Path, mp4: str | Path | None = None,
                          every: int = 2, fps: int = 8) -> list[Path]:
    """Fig. 6: rows original / masked / reconstructed, one column per ``every``-th
    frame, as a PNG; and, if asked, an MP4 of the three side by side."""
    plt = _plt()
    cols = list(range(0, original.shape[0], every))
    fig, axes = plt.subplots(3, len(cols), figsize=(1.5 * len(cols), 4.8), squeeze=False)
    for row, (name, clip) in enumerate((("original", original), ("masked", masked),
                                        ("reconstructed", rebuilt))):
        for j, f in enumerate(cols):
            axes[row, j].imshow(clip[f].numpy())
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    out = [Path(png)]
    if mp4 is not None:
        from ..data.video_writer import write_video

        strip = torch.cat([original, masked, rebuilt], dim=2).numpy()  # (T, H, 3W, C)
        out.append(write_video(mp4, strip, fps, crf=23))
    return out
