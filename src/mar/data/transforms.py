"""Clip transforms: uint8 frames (T, H, W, 3) in, normalised (C, T, H, W) float out.

Training (Table I, Table X): random resized crop, horizontal flip, RandAugment, normalise,
random erasing; every random choice is made once per clip, so all frames get the same
crop, flip, augmentation ops and erased box, and every draw comes from the clip's
``torch.Generator``. The loader's workers do the first three and hand over uint8 clips
with their erasing draw (:meth:`TrainTransform.augment`); the training step normalises
and erases a whole batch where the model runs (:func:`finish`): a quarter of the bytes to
copy, and normalising a float clip was a third of a worker's augmentation time
(docs/data.md). Test: resize the short side to the crop size, then one of K crops along
the long side. The ops are torchvision's (v2 functional) and timm's RandAugment.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .sampling import crop_offsets

# Something-Something v2 classes whose meaning a horizontal flip swaps ("left" <-> "right"):
# the official MAR code flips and swaps 86<->87, 93<->94, 166<->167.
SSV2_FLIP_PAIRS = ((86, 87), (93, 94), (166, 167))


def to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def normalize(video: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """uint8 (T, 3, H, W) -> float (3, T, H, W), (x / 255 - mean) / std."""
    return _scale(video.permute(1, 0, 2, 3).contiguous().float(), mean, std, dim=0)


def _scale(x: Tensor, mean, std, dim: int) -> Tensor:
    """(x - 255 mean) / (255 std) in place, channels along ``dim``: two passes over the
    float tensor, without the division by 255 (a third pass)."""
    shape = [1] * x.dim()
    shape[dim] = 3
    m = torch.tensor(mean, device=x.device).mul(255).view(shape)
    s = torch.tensor(std, device=x.device).mul(255).view(shape)
    return x.sub_(m).div_(s)


# a clip's random-erasing draw, as :meth:`TrainTransform.augment` hands it over: the box
# (h = 0: no erasing) and the seed of its noise
ERASE_FIELDS = ("top", "left", "height", "width", "seed")


def finish(video: Tensor, erase: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """The step after the loader: uint8 clips (N, 3, T, S, S), on any device, with their
    erasing draws (N, 5) (:data:`ERASE_FIELDS`, on the CPU) -> normalised float clips,
    erased where drawn, on the clips' device. Each box's noise comes from a generator
    seeded by the clip's draw, so a clip is reproducible from its seed: on a GPU, one on
    the GPU (no noise crosses the bus); elsewhere the CPU's."""
    x = _scale(video.float(), mean, std, dim=1)
    on_gpu = x.device.type == "cuda"
    for i, (top, left, h, w, seed) in enumerate(erase.tolist()):
        if h > 0:
            g = torch.Generator(device=x.device if on_gpu else "cpu").manual_seed(seed)
            noise = torch.randn((x.shape[1], x.shape[2], h, w), generator=g,
                                device=g.device, dtype=x.dtype)
            x[i, :, :, top:top + h, left:left + w] = noise.to(x.device)
    return x


def _uniform(a: float, b: float, generator) -> float:
    return a + (b - a) * float(torch.rand(1, generator=generator))


def resized_crop_params(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        generator=None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect
    ``ratio`` (log-uniform); after 10 failed draws, a centre crop clipped to ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def erase_draw(height: int, width: int, generator, scale=(0.02, 1 / 3),
               ratio=(0.3, 3.3)) -> Tensor:
    """Random erasing, pixel mode (Zhong et al.): one box, the same in every frame, to be
    filled with per-pixel normal noise by :func:`finish`; (5,) int64, :data:`ERASE_FIELDS`
    (all zero when no box fits in 10 draws)."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = height * width * _uniform(*scale, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        h = round(math.sqrt(target * aspect))
        w = round(math.sqrt(target / aspect))
        if 0 < h < height and 0 < w < width:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            return torch.tensor([top, left, h, w, seed])
    return torch.zeros(5, dtype=torch.long)


class ClipRandAugment:
    """timm's RandAugment (e.g. ``rand-m9-mstd0.5-inc1``) with the same ops and magnitudes
    on every frame of a clip.

    timm's ops draw from Python's and NumPy's global generators; each clip seeds both
    from its own generator before every frame, and the previous global states are
    restored afterwards, so nothing leaks and a clip is reproducible from its seed.
    """

    def __init__(self, config: str = "rand-m9-mstd0.5-inc1", mean=IMAGENET_MEAN):
        from timm.data.auto_augment import rand_augment_transform

        # magnitudes drawn with a std can reach the maximum, 10, where timm's increasing
        # posterize keeps 0 bits, which Pillow >= 12 rejects: cap just below it
        hparams = {"translate_const": 100, "img_mean": tuple(round(255 * m) for m in mean),
                   "magnitude_max": 9.99}
        self.config = config
        self.transform = rand_augment_transform(config, hparams)

    def __call__(self, video: Tensor, generator) -> Tensor:
        """uint8 (T, 3, H, W) -> uint8 (T, 3, H, W)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        saved = random.getstate(), np.random.get_state()
        try:
            out = []
            for frame in video.permute(0, 2, 3, 1).numpy():
                random.seed(seed)
                np.random.seed(seed)
                out.append(np.asarray(self.transform(Image.fromarray(frame))))
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        return to_tensor(np.stack(out))


@dataclass
class TrainTransform:
    """The training augmentation of one clip; ``None``/0 switches a step off (Table X)."""

    crop_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    flip_pairs: tuple[tuple[int, int], ...] = ()
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    erase_prob: float = 0.25
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    _augment: ClipRandAugment | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.rand_augment:
            self._augment = ClipRandAugment(self.rand_augment, self.mean)
        self._swap = {a: b for a, b in self.flip_pairs} | {b: a for a, b in self.flip_pairs}

    def __call__(self, frames: np.ndarray, label: int, generator) -> tuple[Tensor, int]:
        """uint8 (T, H, W, 3), label -> float (3, T, S, S), label (swapped if flipped):
        :meth:`augment` then :func:`finish`, the training path in one call."""
        clip, label, erase = self.augment(frames, label, generator)
        return finish(clip[None], erase[None], self.mean, self.std)[0], label

    def augment(self, frames: np.ndarray, label: int,
                generator) -> tuple[Tensor, int, Tensor]:
        """The loader worker's part: uint8 (T, H, W, 3), label -> uint8 (3, T, S, S)
        cropped, flipped and RandAugmented, the label (swapped if flipped), and the
        erasing draw (5,) that :func:`finish` applies."""
        import torchvision.transforms.v2.functional as TF  # not at import: ~2 s (torchvision)

        video = to_tensor(frames)
        top, left, h, w = resized_crop_params(video.shape[-2], video.shape[-1], self.scale,
                                              self.ratio, generator)
        size = [self.crop_size, self.crop_size]
        video = TF.resized_crop(video, top, left, h, w, size, antialias=True)
        if float(torch.rand(1, generator=generator)) < self.flip_prob:
            video = TF.horizontal_flip(video)
            label = self._swap.get(label, label)
        if self._augment is not None:
            video = self._augment(video, generator)
        erase = torch.zeros(5, dtype=torch.long)
        if self.erase_prob and float(torch.rand(1, generator=generator)) < self.erase_prob:
            erase = erase_draw(self.crop_size, self.crop_size, generator)
        return video.permute(1, 0, 2, 3).contiguous(), label, erase


@dataclass
class EvalTransform:
    """Resize the short side to ``short_side`` (default: the crop size), take crop ``k``
    of ``num_crops`` along the long side (3: start, middle, end), normalise."""

    crop_size: int = 224
    num_crops: int = 1
    short_side: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, frames: np.ndarray, crop: int = 0) -> Tensor:
        """uint8 (T, H, W, 3) -> float (3, T, S, S)."""
        video = to_tensor(frames)
        short = self.short_side or self.crop_size
        if min(video.shape[-2:]) != short:      # frames scaled by the decoder already fit
            import torchvision.transforms.v2.functional as TF

            video = TF.resize(video, [short], antialias=True)
        h, w = video.shape[-2:]
        c = self.crop_size
        if w >= h:
            top, left = (h - c) // 2, crop_offsets(w, c, self.num_crops)[crop]
        else:
            top, left = crop_offsets(h, c, self.num_crops)[crop], (w - c) // 2
        if c > min(h, w):                       # a crop larger than the frame is padded
            import torchvision.transforms.v2.functional as TF

            return normalize(TF.crop(video, top, left, c, c), self.mean, self.std)
        return normalize(video[..., top:top + c, left:left + c], self.mean, self.std)
