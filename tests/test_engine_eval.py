from pathlib import Path

import numpy as np
import pytest
import torch

from mar.engine.evaluate import EvalResult, merge_views, save_confusion, topk_correct
from mar.runtime.distributed import ShardSampler


def test_merge_views_is_exact_on_a_constructed_case():
    # video 7: views 0.6/0.4 and 0.2/0.8 -> mean 0.4/0.6 -> class 1; video 3: one valid view
    scores = torch.tensor([[0.6, 0.4], [0.2, 0.8], [0.9, 0.1], [0.0, 1.0]])
    video = torch.tensor([7, 7, 3, 3])
    labels = torch.tensor([1, 1, 0, 0])
    valid = torch.tensor([True, True, True, False])
    merged, vlabels, ids = merge_views(scores, video, labels, valid, "mean")
    assert ids.tolist() == [3, 7] and vlabels.tolist() == [0, 1]
    assert torch.allclose(merged, torch.tensor([[0.9, 0.1], [0.4, 0.6]]))
    summed, _, _ = merge_views(scores, video, labels, valid, "sum")
    assert torch.allclose(summed, torch.tensor([[0.9, 0.1], [0.8, 1.2]]))
    with pytest.raises(ValueError, match="unknown merge"):
        merge_views(scores, video, labels, valid, "max")


def test_topk():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    labels = torch.tensor([2, 0])
    assert topk_correct(scores, labels, 1).tolist() == [False, True]
    assert topk_correct(scores, labels, 2).tolist() == [True, True]
    assert topk_correct(scores, labels, 5).tolist() == [True, True]


def test_eval_shards_cover_every_item_once_and_training_shards_are_equal():
    shards = [list(ShardSampler(10, r, 3, shuffle=False)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    train = [ShardSampler(23, r, 2, shuffle=True, seed=1, batch_size=4) for r in range(2)]
    for s in train:
        s.set_epoch(3)
    a, b = (list(s) for s in train)
    assert len(a) == len(b) == 8 and not set(a) & set(b)
    again = ShardSampler(23, 0, 2, shuffle=True, seed=1, batch_size=4)
    again.set_epoch(3, start=4)
    assert list(again) == a[4:]
    again.set_epoch(4)
    assert list(again) != a


def test_confusion_files(tmp_path):
    conf = np.array([[3, 1], [0, 2]])
    result = EvalResult(50.0, 100.0, 83.3, 100.0, 6, 6, 0, [0.75, 1.0], conf)
    csv_path, png_path = save_confusion(result, tmp_path, ["left", "right"])
    lines = csv_path.read_text().splitlines()
    assert lines[1] == "left,3,1,0.7500"
    from PIL import Image

    assert Image.open(png_path).size[0] > 100


def test_evaluation_uses_no_more_loader_workers_than_cores(tiny_lists, monkeypatch):
    """data.num_workers is sized for training nodes; evaluation (no randomness) caps it
    at the machine's cores, so a laptop gets no oversubscription warning."""
    import os

    from conftest import as_args, shrink

    import mar.data
    from mar.config import load_config
    from mar.engine.evaluate import run_eval
    from mar.runtime.distributed import init_distributed

    seen = []

    def record(*args, workers, **kwargs):
        seen.append(workers)
        raise RuntimeError("stop")

    monkeypatch.setattr(mar.data, "view_loader", record)
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    cfg = load_config(config, as_args(shrink(config, tiny_lists, **{"data.num_workers": 64})))
    with pytest.raises(RuntimeError, match="stop"):
        run_eval(cfg, None, "val", init_distributed("cpu"))
    assert seen == [min(64, os.cpu_count() or 1)]
