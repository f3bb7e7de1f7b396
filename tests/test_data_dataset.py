import warnings

import pytest
import torch
from torch.utils.data import DataLoader
from videos import REAL, corrupt, frame_index, write_video

from mar.data import (
    ClipSampling,
    DecodeError,
    EvalTransform,
    TrainTransform,
    VideoDataset,
    VideoRecord,
    VideoViews,
    collate,
    collate_views,
)
from mar.data.transforms import finish

SMALL = TrainTransform(crop_size=32, rand_augment=None)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    good = [write_video(d / f"v{i}.mp4", num_frames=24 + 4 * i) for i in range(4)]
    bad = [corrupt(REAL / "bigbuckbunny.mp4", d / f"{k}.mp4", k)
           for k in ("empty", "truncated", "not_video", "bitrot")]
    return good, bad


def test_training_clips_come_from_the_sampled_frames(videos):
    good, _ = videos
    ds = VideoDataset([VideoRecord(str(p), i) for i, p in enumerate(good)],
                      sampling=ClipSampling("dense", num_frames=4, stride=2),
                      train_transform=TrainTransform(crop_size=32, rand_augment=None,
                                                     erase_prob=0, flip_prob=0,
                                                     mean=(0, 0, 0), std=(1 / 255,) * 3))
    item = ds[2]
    assert item["video"].shape == (3, 4, 32, 32) and item["label"] == 2
    levels = [frame_index(f.permute(1, 2, 0).numpy()) for f in item["video"].unbind(1)]
    assert levels == list(range(levels[0], levels[0] + 8, 2))


def test_corrupt_videos_never_stop_an_epoch(videos):
    good, bad = videos
    records = [VideoRecord(str(p), 0) for p in good + bad] * 2
    ds = VideoDataset(records, sampling=ClipSampling("dense", 4, 2),
                      train_transform=SMALL)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    seen, skipped = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in loader:
            seen += batch["video"].shape[0]
            skipped += batch["skipped"]
    assert seen == len(records)
    # every bad file is skipped each time it is drawn; the epoch summary can count them
    assert {str(p) for p in bad} <= set(skipped)
    assert all(s in {str(p) for p in bad} for s in skipped)


def test_each_bad_file_warns_once_per_process(videos):
    good, bad = videos
    ds = VideoDataset([VideoRecord(str(bad[0]), 0), VideoRecord(str(good[0]), 1)],
                      sampling=ClipSampling("dense", 4, 2), train_transform=SMALL)
    with pytest.warns(UserWarning, match="skipping unreadable video") as record:
        for _ in range(3):
            ds[0]
    assert len(record) == 1 and str(bad[0]) in str(record[0].message)


def test_all_bad_gives_up_with_a_clear_error(videos):
    _, bad = videos
    ds = VideoDataset([VideoRecord(str(p), 0) for p in bad], max_retries=3,
                      sampling=ClipSampling("dense", 4, 2), train_transform=SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DecodeError, match="4 videos in a row"):
            ds[0]


def test_items_are_reproducible_per_seed_epoch_and_index(videos):
    good, _ = videos
    records = [VideoRecord(str(p), 0) for p in good]

    def make():
        return VideoDataset(records, sampling=ClipSampling("dense", 4, 2),
                            train_transform=TrainTransform(crop_size=32), seed=5)

    a, b = make(), make()
    assert torch.equal(a[1]["video"], b[1]["video"])
    b.set_epoch(1)
    assert not torch.equal(a[1]["video"], b[1]["video"])


def test_repeated_augmentation_flattens_into_the_batch(videos):
    good, _ = videos
    ds = VideoDataset([VideoRecord(str(p), i) for i, p in enumerate(good)],
                      repeats=2, sampling=ClipSampling("dense", 4, 2), train_transform=SMALL)
    item = ds[0]
    assert item["video"].shape == (2, 3, 4, 32, 32) and item["video"].dtype == torch.uint8
    assert item["erase"].shape == (2, 5)
    clips = finish(item["video"], item["erase"])  # what the training step makes of them
    assert clips.dtype == torch.float32 and not torch.equal(clips[0], clips[1])
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (4, 3, 4, 32, 32) and batch["erase"].shape == (4, 5)
    assert torch.equal(batch["erase"][:2], item["erase"])
    assert batch["label"].tolist() == [0, 0, 1, 1] and batch["index"].tolist() == [0, 0, 1, 1]


def test_multi_view_test_items_are_tagged_and_bad_views_marked(videos):
    good, bad = videos
    records = [VideoRecord(str(good[0]), 3), VideoRecord(str(bad[0]), 4)]
    ds = VideoViews(records, num_clips=2, sampling=ClipSampling("segment", num_frames=4),
                    eval_transform=EvalTransform(crop_size=32, num_crops=3))
    assert len(ds) == 2
    item, bad_item = ds[0], ds[1]
    assert item["video"].shape == (6, 3, 4, 32, 32) and item["valid"] and item["label"] == 3
    assert item["clip"].tolist() == [0, 0, 0, 1, 1, 1]
    assert item["crop"].tolist() == [0, 1, 2, 0, 1, 2]
    assert bad_item["valid"] is False and str(bad[0]) in bad_item["error"]
    assert bad_item["video"].shape == item["video"].shape
    batch = collate_views([item, bad_item])
    assert batch["video"].shape == (12, 3, 4, 32, 32)
    assert batch["valid"].tolist() == [True] * 6 + [False] * 6
    assert batch["index"].tolist() == [0] * 6 + [1] * 6
    assert batch["label"].tolist() == [3] * 6 + [4] * 6
    assert batch["crop"].tolist() == [0, 1, 2] * 4 and list(batch["error"]) == [1]


def test_real_files_through_the_full_training_pipeline():
    records = [VideoRecord(str(REAL / n), i) for i, n in
               enumerate(["bigbuckbunny.mp4", "Megamind.avi", "Megamind_bugy.avi", "tree.avi"])]
    ds = VideoDataset(records)
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 16, 224, 224) and item["skipped"] == []
        assert torch.isfinite(item["video"]).all()


def test_decoded_cache_gives_the_same_items(videos, monkeypatch):
    good, _ = videos
    records = [VideoRecord(str(p), i) for i, p in enumerate(good)]
    kw = dict(sampling=ClipSampling("dense", 4, 2), train_transform=SMALL, seed=3)
    plain, cached = VideoDataset(records, **kw), VideoDataset(records, cache=True, **kw)
    first = [cached[i]["video"] for i in range(4)]
    calls = []
    monkeypatch.setattr(cached.backend, "read", lambda *a, **k: calls.append(a))
    for i in range(4):
        assert torch.equal(cached[i]["video"], first[i])
        assert torch.equal(plain[i]["video"], first[i])
    assert calls == []  # served from memory


def test_views_per_video_are_the_test_views_decoded_once_and_scaled_by_the_decoder():
    """The test views (VideoViews) equal each clip decoded at full size and then resized
    and cropped by the transform, in the same order, up to the resize kernel (FFmpeg's
    area scaling vs torchvision's antialiased bilinear) -- on a real 1280x720 file, 2
    clips x 3 crops."""
    from mar.data import ClipSampling, EvalTransform, VideoRecord, VideoViews, make_backend

    path = str(REAL / "bigbuckbunny.mp4")
    records = [VideoRecord(path, 0), VideoRecord(str(REAL / "missing.mp4"), 0)]
    sampling = ClipSampling("segment", 8)
    transform = EvalTransform(64, 3)
    views = VideoViews(records, sampling=sampling, eval_transform=transform, num_clips=2)
    item = views[0]
    assert item["valid"] and item["video"].shape == (6, 3, 8, 64, 64)
    backend = make_backend("pyav")
    info = backend.probe(path)
    for v in range(6):
        clip, crop = divmod(v, 3)
        frames = backend.read(path, sampling.indices(info.num_frames, train=False, clip=clip,
                                                     num_clips=2), info)
        diff = (item["video"][v] - transform(frames, crop)).abs()
        assert diff.mean() < 0.05 and diff.max() < 1.5, (v, diff.mean(), diff.max())
    assert (item["video"][0] - item["video"][2]).abs().mean() > 0.1  # crops differ
    bad = views[1]
    assert not bad["valid"] and "missing.mp4" in bad["error"]
