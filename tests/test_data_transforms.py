import numpy as np
import pytest
import torch

from mar.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SSV2_FLIP_PAIRS,
    EvalTransform,
    TrainTransform,
    finish,
    normalize,
    to_tensor,
)


def textured_clip(t=8, h=96, w=128, seed=0):
    """Frames that share content, so identical augmentation keeps them identical."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.repeat(frame[None], t, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_training_augmentation_is_identical_across_frames(seed):
    clip = textured_clip()
    out, _ = TrainTransform(crop_size=64, erase_prob=0.0)(clip, 3,
                                                          torch.Generator().manual_seed(seed))
    assert out.shape == (3, 8, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, out[:, :1].expand_as(out))
    # pixel-mode erasing: one box, the same in every frame, filled with fresh noise
    out, _ = TrainTransform(crop_size=64, erase_prob=1.0)(clip, 3,
                                                          torch.Generator().manual_seed(seed))
    diff = (out[:, 1:] != out[:, :1]).any(0).any(0)  # (H, W): where frames differ
    rows, cols = torch.nonzero(diff, as_tuple=True)
    assert len(rows) > 0
    assert diff[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_augmentation_is_reproducible_from_the_seed_and_varies_with_it():
    tf = TrainTransform(crop_size=64)
    clip = textured_clip()
    a, _ = tf(clip, 0, torch.Generator().manual_seed(1))
    b, _ = tf(clip, 0, torch.Generator().manual_seed(1))
    c, _ = tf(clip, 0, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # and the global generators are left as they were
    import random
    state = random.getstate(), np.random.get_state()[1].copy()
    tf(clip, 0, torch.Generator().manual_seed(3))
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])


def test_flip_swaps_left_right_classes_when_asked():
    clip = textured_clip()
    tf = TrainTransform(crop_size=64, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), flip_prob=1.0,
                        flip_pairs=SSV2_FLIP_PAIRS, rand_augment=None, erase_prob=0.0)
    out, label = tf(clip, 86, torch.Generator())
    assert label == 87
    assert tf(clip, 167, torch.Generator())[1] == 166
    assert tf(clip, 5, torch.Generator())[1] == 5
    plain = TrainTransform(crop_size=64, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3),
                           flip_prob=0.0, rand_augment=None, erase_prob=0.0)
    ref, label = plain(clip, 86, torch.Generator())
    assert label == 86 and torch.allclose(out, ref.flip(-1))


@pytest.mark.parametrize("seed", range(4))
def test_the_worker_hands_over_uint8_and_the_step_finishes_the_same_clip(seed):
    """The loader's part (uint8, 4x fewer bytes to copy) then the step's (normalise,
    erase) is the whole augmentation: the same clip as one call, erasing included."""
    tf = TrainTransform(crop_size=64, erase_prob=1.0)
    clip = textured_clip(seed=seed)
    video, label, erase = tf.augment(clip, 3, torch.Generator().manual_seed(seed))
    assert video.dtype == torch.uint8 and video.shape == (3, 8, 64, 64) and label == 3
    top, left, h, w, _ = erase.tolist()
    assert h > 0 and w > 0 and top + h <= 64 and left + w <= 64
    whole, _ = tf(clip, 3, torch.Generator().manual_seed(seed))
    batch = finish(torch.stack([video, video]), torch.stack([erase, torch.zeros(5).long()]))
    assert torch.equal(batch[0], whole)
    plain = normalize(video.permute(1, 0, 2, 3))
    box = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
    assert torch.equal(batch[1], plain)           # no draw: normalised only
    outside = torch.ones_like(plain, dtype=torch.bool)
    outside[box] = False
    assert torch.equal(whole[outside], plain[outside]) and not torch.equal(whole[box], plain[box])


def test_normalize_uses_mean_and_std():
    video = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(video)
    assert out.shape == (3, 2, 4, 4)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 0, 0, 0], expected)


def test_test_crops_sit_at_start_middle_end_of_the_long_side():
    # a 2-frame clip, 112 x 200, whose pixel value is its column index
    cols = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (112, 1, 3))
    clip = np.stack([cols, cols])
    tf = EvalTransform(crop_size=56, num_crops=3, mean=(0, 0, 0), std=(1 / 255,) * 3)
    # short side 112 -> 56: width 200 -> 100; crops at 0, 22, 44
    firsts = [tf(clip, k)[0, 0, 0, 0].item() for k in range(3)]
    lefts = [0, 22, 44]
    assert firsts == pytest.approx([2 * x + 0.5 for x in lefts], abs=1.0)
    assert tf(clip, 0).shape == (3, 2, 56, 56)


def test_to_tensor_layout():
    clip = np.zeros((4, 5, 6, 3), dtype=np.uint8)
    clip[1, 2, 3, 0] = 9
    assert to_tensor(clip)[1, 0, 2, 3] == 9


def test_video_mixup_cutmix_boxes_cover_every_frame_and_targets_are_soft():
    from mar.data.mixup import VideoMixup

    np.random.seed(0)
    video = torch.stack([torch.full((3, 4, 16, 16), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    cut = VideoMixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
    out, soft = cut(video, labels)
    assert torch.allclose(soft.sum(1), torch.ones(4)) and soft.shape == (4, 5)
    # sample 0 is pasted with sample 3 (the flipped batch) in one box, identical per frame
    pasted = out[0, 0] == 3.0
    assert pasted.any() and torch.equal(pasted, pasted[:1].expand_as(pasted))
    lam = 1 - pasted[0].float().mean()
    assert torch.allclose(soft[0, 0], lam * 0.92 + (1 - lam) * 0.02, atol=1e-5)
    mix = VideoMixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    out, soft = mix(video, labels)
    lam = soft[0, 0]
    assert torch.allclose(out[0], lam * 0.0 + (1 - lam) * 3.0)
    with pytest.raises(ValueError, match="even batch size"):
        mix(video[:3], labels[:3])


def test_rand_augment_never_fails_at_the_largest_magnitudes():
    # magnitude std 0.5 around 9 often reaches the cap of 10, where timm's increasing
    # posterize would keep 0 bits, an error in Pillow >= 12
    from mar.data.transforms import ClipRandAugment

    aug = ClipRandAugment("rand-m9-mstd0.5-inc1")
    clip = to_tensor(textured_clip(t=2, h=16, w=16))
    for seed in range(300):
        out = aug(clip, torch.Generator().manual_seed(seed))
        assert out.shape == clip.shape
