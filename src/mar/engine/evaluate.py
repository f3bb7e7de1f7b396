"""The evaluation loop: per-view softmax scores, merged per video across all ranks.

Each rank scores the test views (:class:`mar.data.VideoViews`, the views ``mar
predict`` makes) of its share of the videos with :func:`mar.inference.score`; the scores
are gathered in memory (no text files), and a video's score is the mean (or sum, as the
official MAR code) of its views' softmax. Views of a file that did
not decode are left out and counted.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .. import atomic
from ..masking import MaskingStrategy
from ..runtime.distributed import DistInfo, all_gather_objects

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class EvalResult:
    clip_top1: float
    clip_top5: float
    video_top1: float
    video_top5: float
    num_videos: int
    num_views: int
    skipped_views: int
    per_class: list[float] = field(repr=False)
    confusion: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {"clip_top1": self.clip_top1, "clip_top5": self.clip_top5,
                "video_top1": self.video_top1, "video_top5": self.video_top5,
                "videos": self.num_videos, "views": self.num_views,
                "skipped_views": self.skipped_views}


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N, K) scores, (N,) labels -> (N,) bool: label among the top k."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(1)


def merge_views(scores: Tensor, video: Tensor, labels: Tensor, valid: Tensor,
                method: str = "mean") -> tuple[Tensor, Tensor, Tensor]:
    """Per-view scores (V, K) -> per-video scores (N, K), labels (N,), video ids (N,).

    Invalid views are dropped; a video with no valid view is dropped. ``mean`` averages
    its views' scores, ``sum`` adds them (same ranking, different scale).
    """
    if method not in ("mean", "sum"):
        raise ValueError(f"unknown merge method {method!r}; known: mean, sum")
    scores, video, labels = scores[valid], video[valid], labels[valid]
    ids, inverse = torch.unique(video, return_inverse=True)
    merged = torch.zeros(len(ids), scores.shape[1], dtype=scores.dtype)
    merged.index_add_(0, inverse, scores)
    if method == "mean":
        merged /= torch.bincount(inverse, minlength=len(ids)).unsqueeze(1).to(scores.dtype)
    video_labels = torch.zeros(len(ids), dtype=labels.dtype).scatter_(0, inverse, labels)
    return merged, video_labels, ids


def predict_views(model, loader, masking: MaskingStrategy, *, amp: str | None = None,
                  views_per_call: int | None = None, progress=None) -> dict[str, Tensor]:
    """Softmax scores of every view this rank sees (:func:`mar.inference.score`), with
    their tags, on the CPU; ``loader`` yields :func:`mar.data.collate_views` batches."""
    from ..inference.score import score

    model.eval()
    out = {"scores": [], "video": [], "label": [], "valid": []}
    for batch in loader:
        out["scores"].append(score(model, batch["video"], masking, amp=amp,
                                   views_per_call=views_per_call))
        out["video"].append(batch["index"])
        out["label"].append(batch["label"])
        out["valid"].append(batch["valid"])
        if progress:
            progress(len(batch["index"].unique()))  # videos
    return {k: torch.cat(v) for k, v in out.items()}


def tally(views: dict[str, Tensor], merge: str = "mean") -> dict:
    """One rank's views reduced to what the metrics need: per video, the merged scores
    and label; per view, only the top-1/top-5 hit counts. This, not every view's scores,
    is what ranks exchange (a K400 test is 15x fewer rows)."""
    valid = views["valid"]
    scores, labels = views["scores"][valid], views["label"][valid]
    merged, video_labels, _ = merge_views(views["scores"], views["video"], views["label"],
                                          valid, merge)
    return {"scores": merged, "labels": video_labels,
            "clip_hits": (int(topk_correct(scores, labels, 1).sum()),
                          int(topk_correct(scores, labels, 5).sum())),
            "views": int(valid.sum()), "skipped": int((~valid).sum())}


def evaluate(model, loader, masking: MaskingStrategy, info: DistInfo, num_classes: int,
             merge: str = "mean", *, amp: str | None = None, views_per_call: int | None = None,
             progress=None) -> EvalResult:
    """Top-1/5 at clip (view) and video level, per-class accuracy and confusion matrix,
    over all ranks' views. Each rank merges its own videos' views first (a video's views
    are all on one rank: the evaluation sampler shards whole videos)."""
    local = predict_views(model, loader, masking, amp=amp, views_per_call=views_per_call,
                          progress=progress)
    parts = all_gather_objects(tally(local, merge), info)
    vscores = torch.cat([p["scores"] for p in parts])
    vlabels = torch.cat([p["labels"] for p in parts])
    views = sum(p["views"] for p in parts)
    clip1, clip5 = (sum(p["clip_hits"][i] for p in parts) / views if views else 0.0
                    for i in (0, 1))
    pred = vscores.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (vlabels.numpy(), pred.numpy()), 1)
    totals = confusion.sum(1)
    per_class = [float(confusion[c, c] / totals[c]) if totals[c] else float("nan")
                 for c in range(num_classes)]
    n = len(vlabels)
    return EvalResult(
        100 * clip1, 100 * clip5,
        100 * topk_correct(vscores, vlabels, 1).float().mean().item() if n else 0.0,
        100 * topk_correct(vscores, vlabels, 5).float().mean().item() if n else 0.0,
        n, views, sum(p["skipped"] for p in parts), per_class, confusion)


def class_names(cfg: Config) -> list[str] | None:
    """One name per class (``model.num_classes``) from ``data.class_names``, or None
    without a file. A file with fewer names leaves the rest named by their index (with a
    warning); one with more names than the model has classes is an error."""
    if not cfg.data.class_names:
        return None
    from ..data import read_class_names

    names, k = read_class_names(cfg.data.class_names), cfg.model.num_classes
    if len(names) > k:
        raise ValueError(f"{cfg.data.class_names}: {len(names)} class names, but "
                         f"model.num_classes is {k}")
    if len(names) < k:
        warnings.warn(f"{cfg.data.class_names} names {len(names)} of the {k} classes "
                      "(model.num_classes); the others are named by their index",
                      stacklevel=2)
    return names + [str(i) for i in range(len(names), k)]


def save_confusion(result: EvalResult, out_dir: str | Path,
                   class_names: list[str] | None = None) -> tuple[Path, Path]:
    """``confusion.csv`` (rows: true class, columns: predicted) and ``confusion.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    k = result.confusion.shape[0]
    names = (class_names or [])[:k] + [str(i) for i in range(len(class_names or []), k)]
    csv_path, png_path = out_dir / "confusion.csv", out_dir / "confusion.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names, "accuracy"])
        for i, row in enumerate(result.confusion):
            writer.writerow([names[i], *row.tolist(), f"{result.per_class[i]:.4f}"])
    rows = result.confusion / np.maximum(result.confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.25 * k, 16)  # 16 inches at 100 dpi: 4 pixels a class at 400 classes
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion (row-normalised), video top-1 {result.video_top1:.2f}%")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def eval_loader(cfg: Config, split: str, info: DistInfo):
    """This rank's share of the ``val`` or ``test`` videos of ``cfg`` (of a list: every
    world-th video; of shards: every world-th shard), as batches of their test views; its
    workers persist (a training run evaluates every epoch with the same loader) and its
    batches are pinned on a GPU."""
    from ..data import view_loader
    from ..data.sharded import ShardedViews
    from ..runtime.distributed import ShardSampler

    data = cfg.dataset(split)
    # evaluation draws nothing at random, so more workers than cores gain nothing
    workers = min(cfg.data.num_workers, os.cpu_count() or 1)
    if isinstance(data, ShardedViews):
        data, sampler = data.for_rank(info.rank, info.world_size), None
    else:
        sampler = ShardSampler(len(data), info.rank, info.world_size, shuffle=False)
    return view_loader(data, cfg.eval.batch_size, workers=workers, sampler=sampler,
                       pin_memory=info.device.type == "cuda", persistent=True)


def rank_videos(loader) -> int:
    """The videos an :func:`eval_loader` gives this rank."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return len(loader.dataset)  # ShardedViews: this rank's samples, from the index
    return len(loader.sampler)


def run_eval(cfg: Config, model, split: str, info: DistInfo, out_dir: Path | None = None,
             masking: MaskingStrategy | None = None, loader=None) -> EvalResult:
    """Evaluate ``model`` on the ``val`` (one view) or ``test`` (multi-view) split of
    ``cfg``, with ``masking`` (default: the config's test-time masking); with ``out_dir``
    also write the confusion matrix and per-class accuracy there. ``loader``: one
    :func:`eval_loader` made earlier (default: a new one)."""
    from tqdm import tqdm

    masking = masking or cfg.test_masking()
    loader = loader or eval_loader(cfg, split, info)
    bar = tqdm(total=rank_videos(loader), desc=f"{split} videos", disable=not info.is_main,
               dynamic_ncols=True, leave=False)
    result = evaluate(model, loader, masking, info, cfg.model.num_classes, cfg.eval.merge,
                      amp=cfg.train.amp, views_per_call=cfg.eval.batch_size,
                      progress=bar.update)
    bar.close()
    if out_dir is not None and info.is_main:
        save_confusion(result, out_dir, class_names(cfg))
        atomic.write_text(out_dir / "per_class.json", json.dumps(result.per_class))
    return result


def print_summary(summary: dict) -> None:
    print("\nrun summary")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"  {key:>22}: {value}")
