import math

import pytest
import torch

from mar.masking import STRATEGIES, Mask, make_masking

GRID = (8, 14, 14)
SMALL = (8, 4, 6)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def masked_grid(mask: Mask) -> torch.Tensor:
    return mask.bool().view(mask.batch_size, *mask.grid)


CASES = [
    ("none", 0.0, {}),
    ("random", 0.5, {}), ("random", 0.9, {}),
    ("tube", 0.5, {}), ("tube", 0.75, {}),
    ("frame", 0.5, {}),
    ("block", 0.5, {}), ("block", 0.75, {}),
    ("block_running", 0.5, {}),
    ("random_running", 0.5, {}),
    ("uniform_running", 0.5, {}), ("uniform_running", 0.25, {}),
    ("cell_running", 0.25, {}), ("cell_running", 0.5, {}), ("cell_running", 0.75, {}),
    ("cell_running", 0.5, {"spatial": "random", "temporal": "fixed"}),
    ("cell_running", 0.5, {"cell": (7, 7), "initial": "uniform", "ratio": 24 / 49}),
    ("cell_running", 0.5, {"cell": (14, 14), "initial": "uniform"}),
]


def test_every_strategy_is_covered():
    assert {c[0] for c in CASES} == set(STRATEGIES)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name,ratio,opts", CASES)
def test_indices_partition_tokens_with_constant_counts(name, ratio, opts, train):
    opts = dict(opts)
    ratio = opts.pop("ratio", ratio)
    mask = make_masking(name, ratio, **opts)(4, GRID, train=train, generator=gen())
    n = math.prod(GRID)
    assert mask.ids_keep.shape == (4, mask.num_visible)
    assert mask.ids_mask.shape == (4, n - mask.num_visible)
    both = torch.cat([mask.ids_keep, mask.ids_mask], 1).sort(1).values
    assert torch.equal(both, torch.arange(n).expand(4, n))
    assert torch.all(mask.ids_keep.diff(dim=1) > 0) and torch.all(mask.ids_mask.diff(dim=1) > 0)
    # .bool() says the same thing as the indices
    b = mask.bool()
    assert b.sum(1).tolist() == [mask.num_masked] * 4
    assert torch.all(b.gather(1, mask.ids_mask)) and not torch.any(b.gather(1, mask.ids_keep))
    # the masked fraction is the ratio up to the strategy's rounding
    assert abs(mask.num_masked / n - ratio) <= 1 / 14 + 1e-9


def test_exact_visible_counts():
    t, h, w = GRID
    assert make_masking("random", 0.9)(2, GRID).num_masked == int(0.9 * 1568)
    assert make_masking("tube", 0.9)(2, GRID).num_masked == t * int(0.9 * h * w)
    assert make_masking("frame", 0.5)(2, GRID).num_masked == 4 * h * w
    for ratio, visible in [(0.25, 1176), (0.5, 784), (0.75, 392)]:
        assert make_masking("cell_running", ratio)(2, GRID).num_visible == visible


def test_ratio_zero_is_the_full_token_model():
    for name in STRATEGIES:
        mask = make_masking(name, 0.0)(3, GRID, train=True, generator=gen())
        assert mask.num_masked == 0
        assert torch.equal(mask.ids_keep, torch.arange(1568).expand(3, -1))


def test_cell_running_eval_follows_the_official_state_order():
    # 2x2 cell, 50%: positions TL, TR, BL, BR = 0..3; state A masks the first two and each
    # frame moves the masked slots one position forward: visible BL+BR, TL+BR, TL+TR, TR+BL
    mask = make_masking("cell_running", 0.5)(1, GRID, train=False)
    m = masked_grid(mask)[0]
    expected_visible = [{2, 3}, {0, 3}, {0, 1}, {1, 2}]
    for t in range(8):
        cell = m[t, :2, :2].flatten()
        assert {i for i in range(4) if not cell[i]} == expected_visible[t % 4]
        # spatially repeated: every cell of the frame equals the first one
        assert torch.equal(m[t], cell.view(2, 2).repeat(7, 7))


def test_cell_running_start_state_shifts_the_eval_mask():
    a = masked_grid(make_masking("cell_running", 0.5)(1, GRID, train=False))
    b = masked_grid(make_masking("cell_running", 0.5, start_state=1)(1, GRID, train=False))
    assert torch.equal(b[:, :-1], a[:, 1:])
    assert not torch.equal(a, b)


def test_cell_running_eval_mask_is_deterministic_and_shared_by_the_batch():
    s = make_masking("cell_running", 0.5)
    a = s(3, GRID, train=False, generator=gen(1))
    b = s(3, GRID, train=False, generator=gen(2))
    assert torch.equal(a.ids_keep, b.ids_keep)
    assert torch.equal(a.ids_keep[0], a.ids_keep[2])


@pytest.mark.parametrize("cell", [(2, 2), (2, 3), (1, 3)])
@pytest.mark.parametrize("ratio_num", [1, 2])
@pytest.mark.parametrize("spatial", ["repeated", "random"])
@pytest.mark.parametrize("temporal", ["fixed", "shuffled"])
def test_cell_running_balance(cell, ratio_num, spatial, temporal):
    r, q = cell
    p = r * q
    ratio = ratio_num / p
    k = ratio_num
    grid = (2 * p, r * 2, q * 3)
    s = make_masking("cell_running", ratio, cell=cell, spatial=spatial, temporal=temporal)
    for train in (True, False):
        m = masked_grid(s(5, grid, train=train, generator=gen(3)))
        cells = m.view(5, grid[0], grid[1] // r, r, grid[2] // q, q)
        # every cell of every frame masks exactly k positions
        assert torch.all(cells.sum((3, 5)) == k)
        # every location is visible equally often: (p - k) times per p frames
        assert torch.all((~m).sum(1) == 2 * (p - k))
        if not train or temporal == "fixed":
            # in running order each window of p consecutive frames shows every location
            # exactly p - k times
            for t0 in range(grid[0] - p + 1):
                assert torch.all((~m[:, t0:t0 + p]).sum(1) == p - k)


def test_cell_running_training_augmentations():
    t = 8
    fixed = make_masking("cell_running", 0.5, temporal="fixed")
    m = masked_grid(fixed(16, GRID, train=True, generator=gen(0)))
    cell = m[:, :, :2, :2].reshape(16, t, 4)
    # fixed order: each frame is the previous one moved one slot forward
    assert torch.equal(cell[:, 1:], cell[:, :-1].roll(1, dims=2))
    starts = {tuple(c[0].tolist()) for c in cell}
    assert len(starts) > 1  # random start states across the batch

    shuffled = make_masking("cell_running", 0.5)
    m = masked_grid(shuffled(16, GRID, train=True, generator=gen(0)))
    cell = m[:, :, :2, :2].reshape(16, t, 4)
    assert not torch.equal(cell[:, 1:], cell[:, :-1].roll(1, dims=2))
    # spatially repeated: all cells in a frame share the state
    assert torch.equal(m, cell.view(16, t, 2, 2).repeat(1, 1, 7, 7))

    rand = make_masking("cell_running", 0.5, spatial="random")
    m = masked_grid(rand(4, GRID, train=True, generator=gen(0)))
    assert not torch.equal(m, m[:, :, :2, :2].repeat(1, 1, 7, 7))


def test_training_masks_are_reproducible_from_the_generator():
    for name in STRATEGIES:
        if name == "none":
            continue
        s = make_masking(name, 0.5)
        a, b, c = (s(4, GRID, train=True, generator=gen(seed)) for seed in (7, 7, 8))
        assert torch.equal(a.ids_keep, b.ids_keep), name
        assert not torch.equal(a.ids_keep, c.ids_keep), name


def test_tube_is_constant_over_time_and_frame_masks_whole_frames():
    m = masked_grid(make_masking("tube", 0.75)(4, GRID, generator=gen()))
    assert torch.equal(m, m[:, :1].expand_as(m))
    assert not torch.equal(m[0], m[1])
    m = masked_grid(make_masking("frame", 0.5)(4, GRID, generator=gen()))
    per_frame = m.flatten(2)
    assert torch.all(per_frame.all(2) | ~per_frame.any(2))
    assert torch.all(per_frame.all(2).sum(1) == 4)


def _is_block(frame: torch.Tensor) -> bool:
    rows, cols = torch.nonzero(frame, as_tuple=True)
    box = frame[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    # a rectangle whose last row may be partly filled from the left
    return bool(box[:-1].all()) and bool(box[-1].int().diff().le(0).all())


def test_block_masks_are_blocks_and_block_running_runs():
    k = int(0.5 * 196)
    m = masked_grid(make_masking("block", 0.5)(3, GRID, generator=gen()))
    for frame in m.flatten(0, 1):
        assert frame.sum() == k and _is_block(frame)
    assert not torch.equal(m[0, 0], m[0, 1])  # standard: a new block every frame
    m = masked_grid(make_masking("block_running", 0.5)(3, GRID, generator=gen()))
    assert _is_block(m[0, 0])
    flat = m.flatten(2)
    assert torch.equal(flat[:, 1:], flat[:, :-1].roll(1, dims=2))


def test_random_and_uniform_running_move_one_slot_per_frame():
    for name in ("random_running", "uniform_running"):
        m = masked_grid(make_masking(name, 0.5)(3, GRID, train=False)).flatten(2)
        assert torch.equal(m[:, 1:], m[:, :-1].roll(1, dims=2)), name
    first = masked_grid(make_masking("uniform_running", 0.25)(1, GRID, train=False))[0, 0]
    assert first.flatten().nonzero().flatten().tolist() == list(range(0, 196, 4))


def test_bad_settings_fail_with_clear_errors():
    with pytest.raises(ValueError, match="multiple of 1/4"):
        make_masking("cell_running", 0.6)(1, GRID)
    with pytest.raises(ValueError, match="does not tile"):
        make_masking("cell_running", 0.5, cell=(3, 3))(1, GRID)
    with pytest.raises(ValueError, match="unknown masking strategy 'runing'"):
        make_masking("runing", 0.5)
    with pytest.raises(ValueError, match="unknown option"):
        make_masking("tube", 0.5, cell=(2, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make_masking("random", 1.0)
    with pytest.raises(ValueError, match="spatial"):
        make_masking("cell_running", 0.5, spatial="repeat")
    with pytest.raises(ValueError, match="same number"):
        Mask.from_bool(torch.tensor([[True, False], [True, True]]), (1, 1, 2))
