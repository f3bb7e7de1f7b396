"""``mar data bench``: clips/s of decoding alone and of the full training pipeline."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from .dataset import ClipSampling, VideoDataset, collate
from .decode import make_backend
from .lists import VideoRecord
from .transforms import TrainTransform


def bench_decode(records: list[VideoRecord], backend: str, clips: int,
                 sampling: ClipSampling, seed: int = 0) -> float:
    """Clips/s decoding ``sampling.num_frames`` frames of random clips, one process."""
    dec = make_backend(backend)
    generator = torch.Generator().manual_seed(seed)
    infos = {r.path: dec.probe(r.path) for r in records}
    start = time.perf_counter()
    for i in range(clips):
        r = records[i % len(records)]
        info = infos[r.path]
        indices = sampling.indices(info.num_frames, train=True, generator=generator)
        dec.read(r.path, indices, info)
    return clips / (time.perf_counter() - start)


def bench_pipeline(records: list[VideoRecord], backend: str, clips: int, workers: int,
                   sampling: ClipSampling, crop_size: int = 224, seed: int = 0) -> float:
    """Clips/s of decode + the full training augmentation through a DataLoader."""
    repeat = max(1, -(-clips // len(records)))
    dataset = VideoDataset(records * repeat, sampling=sampling,
                           train_transform=TrainTransform(crop_size=crop_size),
                           backend=backend, seed=seed)
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    next(it)  # start-up (worker spawn, first decode) is not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(clips - 1):
        batch = next(it, None)
        if batch is None:
            break
        n += batch["video"].shape[0]
    return n / (time.perf_counter() - start)
