import math

import pytest
import torch

from mar.masking import STRATEGIES, Mask, cell_count, make_masking, spread_pattern

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
    ("cell_running", 0.5, {"cell": (7, 7)}), ("cell_running", 0.3, {"cell": (7, 7)}),
    ("cell_running", 0.5, {"cell": (7, 7), "initial": "first", "spatial": "random"}),
    ("cell_running", 0.5, {"cell": (7, 7), "initial": "uniform", "ratio": 24 / 49}),
    ("cell_running", 0.5, {"cell": (14, 14), "initial": "uniform"}),
    ("cell_running", 0.5, {"cell": (1, 2)}), ("cell_running", 0.55, {}),
]


def test_every_strategy_is_covered():
    assert {c[0] for c in CASES} == set(STRATEGIES)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name,ratio,opts", CASES)
def test_indices_partition_tokens_with_constant_counts(name, ratio, opts, train):
    opts = dict(opts)
    ratio = opts.pop("ratio", ratio)
    strategy = make_masking(name, ratio, **opts)
    mask = strategy(4, GRID, train=train, generator=gen())
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
    # the masked fraction is the ratio up to the strategy's rounding, and says so
    assert abs(mask.num_masked / n - ratio) <= 1 / 14 + 1e-9
    assert mask.num_masked / n == pytest.approx(strategy.effective_ratio(GRID))


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
    with pytest.raises(ValueError, match="does not tile"):
        make_masking("cell_running", 0.5, cell=(3, 3))(1, GRID)
    # partial cells are not supported: the error names the cell, the grid and what tiles
    with pytest.raises(ValueError, match=r"cell 4x4 does not tile the 14x14 token frame of "
                                         r"grid 8x14x14.*1, 2, 7, 14"):
        make_masking("cell_running", 0.5, cell=(4, 4))(1, GRID)
    with pytest.raises(ValueError, match="does not tile"):
        make_masking("cell_running", 0.5, cell=(4, 4)).effective_ratio(GRID)
    with pytest.raises(ValueError, match="at least 2 positions"):
        make_masking("cell_running", 0.5, cell=(1, 1))
    with pytest.raises(ValueError, match="initial"):
        make_masking("cell_running", 0.5, initial="spread")
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


# --- Table IV: the spatial size of the running cell -------------------------------------

STATES_2X2 = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]],
                          dtype=torch.bool)  # A, B, C, D: Fig. 3(e), official [1,1,0,0] rotated


@pytest.mark.parametrize("initial", [None, "first"])
def test_2x2_at_half_is_unchanged(initial):
    # the default 2x2 cell keeps state A = the first two positions (TL, TR) and the eval
    # mask is the tiled A, B, C, D, A, ... sequence, as before the large-cell defaults
    opts = {} if initial is None else {"initial": initial}
    s = make_masking("cell_running", 0.5, **opts)
    assert s.initial_for(4) == "first"
    m = masked_grid(s(2, GRID, train=False))
    expected = torch.stack([STATES_2X2[t % 4].view(2, 2).repeat(7, 7) for t in range(8)])
    assert torch.equal(m, expected.expand(2, -1, -1, -1))
    assert s.effective_ratio(GRID) == 0.5


def test_default_initial_depends_on_cell_size():
    s = make_masking("cell_running", 0.5)
    assert [s.initial_for(p) for p in (2, 3, 4, 6, 49, 196)] == ["first"] * 3 + ["uniform"] * 3
    assert make_masking("cell_running", 0.5, initial="first").initial_for(49) == "first"
    assert make_masking("cell_running", 0.5, initial="uniform").initial_for(4) == "uniform"
    # a 14x14 cell is uniform running masking (paper §III-B), the eval masks coincide
    a = make_masking("cell_running", 0.5, cell=(14, 14))(1, GRID, train=False)
    b = make_masking("uniform_running", 0.5)(1, GRID, train=False)
    assert torch.equal(a.ids_keep, b.ids_keep)


def _cells(m: torch.Tensor, r: int, q: int) -> torch.Tensor:
    """(B, T, H, W) -> (B, T, H/r, W/q, r*q): each cell's positions, row-major."""
    b, t, h, w = m.shape
    return m.view(b, t, h // r, r, w // q, q).transpose(3, 4).reshape(b, t, h // r, w // q,
                                                                       r * q)


@pytest.mark.parametrize("spatial", ["repeated", "random"])
@pytest.mark.parametrize("temporal", ["shuffled", "fixed"])
@pytest.mark.parametrize("cell,ratio,k", [((7, 7), 0.5, 25), ((7, 7), 0.3, 15),
                                          ((14, 14), 0.5, 98), ((2, 7), 0.5, 7)])
def test_large_cells_have_exact_equal_counts(cell, ratio, k, spatial, temporal):
    # train masks (every augmentation) and the eval mask: k per cell per frame, so every
    # frame and every clip of the batch has the same count and batches stack
    r, q = cell
    s = make_masking("cell_running", ratio, cell=cell, spatial=spatial, temporal=temporal)
    assert s.masked_per_cell(GRID) == k
    n_cells = (14 // r) * (14 // q)
    for train in (True, False):
        mask = s(6, GRID, train=train, generator=gen(5))
        m = masked_grid(mask)
        assert torch.all(_cells(m, r, q).sum(-1) == k)
        assert torch.all(m.sum((2, 3)) == n_cells * k)
        assert mask.num_masked == 8 * n_cells * k
        assert mask.num_visible == 1568 - 8 * n_cells * k
        if train and spatial == "random" and n_cells > 1:
            assert not torch.equal(m, m[:, :, :r, :q].repeat(1, 1, 14 // r, 14 // q))


def _is_balanced(pattern: torch.Tensor) -> bool:
    """Every cyclic run of L positions holds floor(L k / p) or ceil(L k / p) True."""
    p, k = pattern.numel(), int(pattern.sum())
    twice = torch.cat([pattern, pattern]).int()
    for length in range(1, p + 1):
        runs = twice.unfold(0, length, 1)[:p].sum(1)
        if runs.min() < (length * k) // p or runs.max() > -(-length * k // p):
            return False
    return True


def test_spread_pattern_is_balanced():
    for p, k in [(49, 25), (49, 24), (49, 15), (196, 98), (196, 49), (6, 2), (4, 2)]:
        pattern = spread_pattern(p, k)
        assert int(pattern.sum()) == k and _is_balanced(pattern), (p, k)


def test_large_cell_default_is_spread_not_a_block():
    # the paper: large cells must start uniformly, not as a block (Table IV discussion)
    m = masked_grid(make_masking("cell_running", 0.5, cell=(7, 7))(1, GRID, train=False))[0]
    for t in range(8):  # running keeps the spread in every frame, in every cell
        for cell in _cells(m[None], 7, 7)[0, t].reshape(-1, 49):
            assert _is_balanced(cell)
    frame0 = m[0, :7, :7].flatten()
    masked = frame0.nonzero().flatten()
    assert masked.tolist() == [0, 1] + list(range(3, 49, 2))  # floor(i * 49 / 25)
    # no row-major run of masked tokens longer than ceil(k / (p - k)) = 2
    assert max(len(run) for run in "".join("1" if x else "0" for x in frame0).split("0")) == 2
    # explicit "first" is still available, and is the block the default avoids
    block = masked_grid(make_masking("cell_running", 0.5, cell=(7, 7), initial="first")(
        1, GRID, train=False))[0, 0, :7, :7].flatten()
    assert block.nonzero().flatten().tolist() == list(range(25))


@pytest.mark.parametrize("cell,ratio", [((7, 7), 0.5), ((7, 7), 0.3), ((14, 14), 0.5)])
def test_large_cells_show_every_position_about_equally_often(cell, ratio):
    # over the T' = 8 frames of a clip, a position is visible T' (p - k) / p times rounded
    # down or up: |visible - T' (p - k) / p| < 1 (7x7 at 50 %: 3 or 4 of 8; 14x14: 4),
    # for eval masks and for training masks of every augmentation (a frame shuffle or a
    # random start keeps the frames a window of consecutive running states)
    r, q = cell
    p = r * q
    k = cell_count(ratio, p)
    expected = 8 * (p - k) / p
    for spatial in ("repeated", "random"):
        for temporal in ("shuffled", "fixed"):
            s = make_masking("cell_running", ratio, cell=cell, spatial=spatial,
                             temporal=temporal)
            for train in (True, False):
                visible = (~masked_grid(s(4, GRID, train=train, generator=gen(2)))).sum(1)
                assert torch.all((visible - expected).abs() < 1), (spatial, temporal, train)


def test_ratios_the_cell_does_not_divide_round_to_the_nearest_count():
    # nearest whole count, a tie (x.5) going up, kept in 1..p-1
    table = {(0.5, 49): 25, (24 / 49, 49): 24, (0.3, 49): 15, (0.5, 196): 98,
             (0.6, 4): 2, (0.7, 4): 3, (0.9, 4): 3, (0.4, 4): 2, (0.1, 4): 1, (0.75, 4): 3,
             (0.99, 49): 48, (0.001, 49): 1, (0.0, 4): 0, (0.5, 2): 1}
    for (ratio, p), k in table.items():
        assert cell_count(ratio, p) == k, (ratio, p)
    for ratio, cell, visible, effective in [(0.6, (2, 2), 784, 0.5), (0.9, (2, 2), 392, 0.75),
                                            (0.5, (7, 7), 768, 25 / 49),
                                            (24 / 49, (7, 7), 800, 24 / 49)]:
        s = make_masking("cell_running", ratio, cell=cell)
        assert s.effective_ratio(GRID) == pytest.approx(effective)
        for train in (True, False):
            mask = s(3, GRID, train=train, generator=gen())
            assert mask.num_visible == visible
            assert mask.num_masked / mask.num_tokens == pytest.approx(effective)


def test_flops_count_the_real_visible_tokens():
    from mar.flops import model_cost

    costs = {cell: model_cost("vit_base", make_masking("cell_running", 0.5, cell=cell),
                              num_classes=174) for cell in ((2, 2), (7, 7), (14, 14))}
    assert [c.num_visible for c in costs.values()] == [784, 768, 784]
    assert costs[(7, 7)].gflops < costs[(2, 2)].gflops == pytest.approx(costs[(14, 14)].gflops)
