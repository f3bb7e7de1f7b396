"""VideoMAE's way of making a training clip, for ``bench_loader.py`` to compare against.

Written from the described behaviour of VideoMAE's loader (``loadvideo_decord`` in its
``dataset/kinetics.py`` and ``dataset/ssv2.py``, ``num_sample``, the training
augmentation); no code of it is copied:

1. decode with decord, ``VideoReader(path, num_threads=1, ctx=cpu(0))`` (its length is the
   frame count), ``get_batch`` of the sampled indices: full-size frames;
2. per augmented sample (``num_sample`` of them per decoded clip): RandAugment through
   PIL on every full-size frame (the same ops and magnitudes on each frame of a clip),
   to float and normalise (still full size), random resized crop to 224 (bilinear
   interpolation of the float clip), horizontal flip (not on Something-Something),
   random erasing (timm's ``RandomErasing``, pixel mode, p 0.25, on the frames as a
   batch);
3. the samples of a video are stacked and flattened into the batch, as its
   ``multiple_samples_collate`` does.

The frame indices come from the same :class:`mar.data.ClipSampling` as ours, so both
pipelines decode the same frames. Randomness comes from the global generators, as in
VideoMAE (the DataLoader seeds them per worker). An item has the keys of
:class:`mar.data.VideoDataset`'s (``erase``: empty draws, the clips are erased already),
so the same loader and collate carry both; mar's collate stacks the clips with torch's
``default_collate``, as VideoMAE's ``multiple_samples_collate`` does. decord is imported
by the process that decodes (a DataLoader worker): ``pip install decord``.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from mar.constants import IMAGENET_MEAN, IMAGENET_STD
from mar.data import ClipSampling
from mar.data.lists import VideoRecord


class VideoMAETrainClips(Dataset):
    """Training clips the VideoMAE way: ``video`` (num_sample, C, T, S, S) float."""

    def __init__(self, records: list[VideoRecord], sampling: ClipSampling, *,
                 rand_augment: str = "rand-m9-mstd0.5-inc1", num_sample: int = 2,
                 flip: bool = True, crop_size: int = 224, erase_prob: float = 0.25,
                 max_retries: int = 10):
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        self.records, self.sampling = list(records), sampling
        self.num_sample, self.flip, self.crop_size = num_sample, flip, crop_size
        self.max_retries = max_retries
        hparams = {"translate_const": int(crop_size * 0.45),
                   "img_mean": tuple(round(255 * m) for m in IMAGENET_MEAN),
                   "magnitude_max": 9.99}  # Pillow >= 12 refuses timm's posterize at 10
        self.rand_augment = rand_augment_transform(rand_augment, hparams)
        self.erase = RandomErasing(erase_prob, mode="pixel", max_count=1, num_splits=0,
                                   device="cpu")
        self.mean = torch.tensor(IMAGENET_MEAN)
        self.std = torch.tensor(IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, path: str) -> np.ndarray:
        """The sampled frames, full size: uint8 (T, H, W, 3); empty if decord fails."""
        from decord import VideoReader, cpu

        try:
            reader = VideoReader(path, num_threads=1, ctx=cpu(0))
            indices = self.sampling.indices(len(reader), train=True)  # global RNG
            reader.seek(0)
            return reader.get_batch(indices).asnumpy()
        except Exception:  # VideoMAE returns [] and the item draws another video
            return np.empty(0)

    def augment(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) full size -> float (C, T, S, S)."""
        seed = random.randrange(2**31)
        saved = random.getstate(), np.random.get_state()
        images = []
        for frame in frames:  # RandAugment through PIL, the same draws on every frame
            random.seed(seed)
            np.random.seed(seed)
            images.append(np.asarray(self.rand_augment(Image.fromarray(frame))))
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        video = torch.from_numpy(np.stack(images)).float().div_(255)  # (T, H, W, C)
        video = (video - self.mean) / self.std
        video = video.permute(3, 0, 1, 2)                              # (C, T, H, W)
        video = self.random_resized_crop(video)
        if self.flip and random.random() < 0.5:
            video = video.flip(-1)
        # timm's RandomErasing on (T, C, H, W): each frame is an image of the batch
        return self.erase(video.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)

    def random_resized_crop(self, video: torch.Tensor) -> torch.Tensor:
        """Scale (0.08, 1), ratio (3/4, 4/3), bilinear to ``crop_size``: (C, T, H, W)."""
        from torchvision.transforms import RandomResizedCrop

        top, left, h, w = RandomResizedCrop.get_params(video[:, 0], (0.08, 1.0),
                                                       (3 / 4, 4 / 3))
        crop = video[..., top:top + h, left:left + w]
        return F.interpolate(crop, size=(self.crop_size, self.crop_size), mode="bilinear",
                             align_corners=False)

    def __getitem__(self, index):
        index = index[0] if isinstance(index, tuple) else index  # (index, epoch) pairs
        for _ in range(self.max_retries + 1):
            record = self.records[index]
            frames = self.load(record.path)
            if len(frames):
                break
            index = random.randrange(len(self.records))
        else:
            raise RuntimeError(f"{self.max_retries + 1} videos in a row failed to decode")
        samples = torch.stack([self.augment(frames) for _ in range(self.num_sample)])
        erase = torch.zeros(self.num_sample, 5, dtype=torch.long)  # erased already
        many = self.num_sample > 1
        return {"video": samples if many else samples[0],
                "erase": erase if many else erase[0],
                "label": torch.full((self.num_sample,), record.label) if many else record.label,
                "index": index, "valid": True, "skipped": []}
