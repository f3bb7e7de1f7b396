import torch

from mar.data.sampling import (
    View,
    crop_offsets,
    dense_indices,
    multi_views,
    segment_indices,
)


def test_dense_test_clips_are_evenly_spread():
    # 100 frames, 16 at stride 4: span 61, room 39
    assert dense_indices(100, 16, 4, train=False) == list(range(19, 80, 4))
    clips = [dense_indices(100, 16, 4, train=False, clip=k, num_clips=5) for k in range(5)]
    assert [c[0] for c in clips] == [0, 10, 20, 29, 39]
    assert clips[-1][-1] == 99


def test_dense_train_start_is_random_in_range_and_seeded():
    starts = set()
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        idx = dense_indices(100, 16, 4, train=True, generator=g)
        assert idx == list(range(idx[0], idx[0] + 61, 4)) and 0 <= idx[0] <= 39
        starts.add(idx[0])
    assert len(starts) > 10
    a = dense_indices(100, 16, 4, train=True, generator=torch.Generator().manual_seed(3))
    b = dense_indices(100, 16, 4, train=True, generator=torch.Generator().manual_seed(3))
    assert a == b


def test_short_videos_repeat_the_last_frame():
    assert dense_indices(10, 4, 4, train=False) == [0, 4, 8, 9]
    assert dense_indices(10, 4, 4, train=True, generator=torch.Generator()) == [0, 4, 8, 9]
    assert segment_indices(3, 6, train=False) == [0, 0, 1, 1, 2, 2]


def test_segment_test_styles():
    # 32 frames, 4 segments of 8
    assert segment_indices(32, 4, train=False) == [4, 12, 20, 28]  # centres
    assert [segment_indices(32, 4, train=False, clip=k, num_clips=2) for k in range(2)] == \
        [[2, 10, 18, 26], [6, 14, 22, 30]]
    assert [segment_indices(32, 4, train=False, clip=k, num_clips=2, style="videomae")
            for k in range(2)] == [[0, 8, 16, 24], [4, 12, 20, 28]]
    assert [segment_indices(32, 4, train=False, clip=k, num_clips=2, style="mar")
            for k in range(2)] == [[0, 8, 16, 24], [7, 15, 23, 31]]


def test_segment_train_draws_one_frame_inside_each_segment():
    for seed in range(20):
        idx = segment_indices(50, 16, train=True, generator=torch.Generator().manual_seed(seed))
        seg = 50 / 16
        assert all(int(seg * i) <= f < max(int(seg * (i + 1)), int(seg * i) + 1)
                   for i, f in enumerate(idx))


def test_spatial_crops_and_views():
    assert crop_offsets(398, 224, 3) == [0, 87, 174]
    assert crop_offsets(300, 224, 1) == [38]
    assert crop_offsets(224, 224, 3) == [0, 0, 0]
    views = multi_views(5, 3)
    assert len(views) == 15 and views[0] == View(0, 0) and views[4] == View(1, 1)
