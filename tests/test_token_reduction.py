"""Test-time token reduction: random drop, ToMe, RLT and RLT + MAR (mar.models.token_reduction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mar.flops import formula_flops, measure_flops, reduction_cost, reduction_flops
from mar.masking import Mask, make_masking
from mar.models import create_model, patchify
from mar.models.token_reduction import (
    TokenReduction,
    bipartite_merge,
    calibrate_rlt_threshold,
    pad_kept,
    rlt_keep,
    tubelet_change,
    weighted_mean,
)

FRAMES, SIZE, PATCH = 8, 32, 8          # grid (4, 4, 4): 64 tokens
GRID = (4, 4, 4)
N = 64
HEADS = ("bridging", "linear", "mlp")


def model(head: str = "bridging", seed: int = 0):
    torch.manual_seed(seed)
    return create_model("vit_nano", num_classes=7, num_frames=FRAMES, img_size=SIZE,
                        patch_size=PATCH, head=head).eval()


def moving_square_clip(seed: int = 0, speed: int = 3, side: int = 6, top: int = 9,
                       start: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """A static noise background and a bright square moving right ``speed`` px a frame.

    Returns the clip (1, 3, T, H, W) and the square's coverage (T, H, W) bool."""
    rng = np.random.default_rng(seed)
    background = rng.uniform(0, 1, (3, SIZE, SIZE)).astype(np.float32)
    clip = np.repeat(background[:, None], FRAMES, axis=1)
    cover = np.zeros((FRAMES, SIZE, SIZE), dtype=bool)
    for f in range(FRAMES):
        x0 = start + speed * f
        cover[f, top:top + side, x0:x0 + side] = True
    clip[:, cover] = 5.0
    return torch.from_numpy(clip)[None], cover


def expected_kept(cover: np.ndarray, tubelet: int = 2) -> np.ndarray:
    """Geometry only: a tubelet survives iff the square's footprint inside its patch
    differs, in some frame, from that of the previous tubelet; the first tubelet always."""
    t_, h_, w_ = FRAMES // tubelet, SIZE // PATCH, SIZE // PATCH
    keep = np.ones((t_, h_, w_), dtype=bool)
    for t in range(1, t_):
        for h in range(h_):
            for w in range(w_):
                cells = (slice(h * PATCH, (h + 1) * PATCH), slice(w * PATCH, (w + 1) * PATCH))
                keep[t, h, w] = any(
                    not np.array_equal(cover[(t * tubelet + j, *cells)],
                                       cover[((t - 1) * tubelet + j, *cells)])
                    for j in range(tubelet))
    return keep.reshape(-1)


@pytest.mark.parametrize("head", HEADS)
def test_zero_reduction_equals_full_model_exactly(head):
    m = model(head)
    video = torch.randn(3, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        full = m.classify(video)
        for method in ("none", "random", "tome", "rlt", "rlt+mar"):
            out = TokenReduction(m, method, ratio=0.0, tome_r=0, rlt_threshold=0.0)(video)
            assert torch.equal(out, full), method


def test_counts_and_shapes():
    m = model()
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        drop = TokenReduction(m, "random", ratio=0.75, seed=1)
        tokens = drop.forward_features(video)
        assert tokens.x.shape == (2, N // 4, 64) and drop.counts == [16, 16]
        assert drop.forward_head(tokens).shape == (2, 7)
        tome = TokenReduction(m, "tome", tome_r=[10, 10, 5, 0])
        tokens = tome.forward_features(video)
        assert tokens.x.shape == (2, N - 25, 64) and tokens.weights.shape == (2, N - 25)
        capped = TokenReduction(m, "tome", tome_r=40).forward_features(video)  # r <= n // 2
        assert capped.x.shape[1] == 64 - 32 - 16 - 8 - 4
        rlt = TokenReduction(m, "rlt", rlt_threshold=0.5)
        tokens = rlt.forward_features(video)
        kept = rlt_keep(video, PATCH, 2, 0.5).sum(1)
        assert rlt.counts == kept.tolist()
        assert tokens.x.shape[1] == int(kept.max())
        assert rlt.mean_kept_tokens() == pytest.approx(kept.float().mean().item())


def test_random_drop_is_seeded_and_differs_per_clip():
    m = model()
    clip = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    video = clip.expand(4, -1, -1, -1, -1).contiguous()     # the same clip four times
    with torch.no_grad():
        drop = TokenReduction(m, "random", ratio=0.5, seed=3)
        tokens = drop.forward_features(video)
        a = drop.forward_head(tokens)
        b = TokenReduction(m, "random", ratio=0.5, seed=3)(video)
        c = TokenReduction(m, "random", ratio=0.5, seed=4)(video)
        # each clip's logits are the model's under that clip's own mask
        for i in range(4):
            row = Mask(tokens.mask.ids_keep[i:i + 1], tokens.mask.ids_mask[i:i + 1], GRID)
            torch.testing.assert_close(a[i:i + 1], m.classify(clip, row))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    kept = {tuple(row) for row in tokens.mask.ids_keep.tolist()}
    assert len(kept) == 4                                   # four different masks ...
    for i in range(1, 4):                                   # ... so four different outputs
        assert not torch.allclose(a[0], a[i])


def test_merge_conserves_size_weighted_mass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 21, 5, dtype=torch.float64, generator=g)
    sizes = torch.randint(1, 4, (3, 21), generator=g).to(torch.float64)
    metric = torch.randn(3, 21, 4, dtype=torch.float64, generator=g)
    for r in (1, 4, 10):
        merged, new_sizes = bipartite_merge(x, sizes, metric, r)
        assert merged.shape == (3, 21 - r, 5) and new_sizes.shape == (3, 21 - r)
        torch.testing.assert_close((merged * new_sizes[..., None]).sum(1),
                                   (x * sizes[..., None]).sum(1), rtol=1e-12, atol=1e-12)
        assert torch.equal(new_sizes.sum(1), sizes.sum(1))


def test_merge_joins_the_most_similar_pair():
    x = torch.arange(6, dtype=torch.float64).view(1, 6, 1)     # A = 0, 2, 4; B = 1, 3, 5
    metric = torch.eye(6, dtype=torch.float64)[None]
    metric[0, 2] = metric[0, 5]                                 # A token 2 == B token 5
    merged, sizes = bipartite_merge(x, torch.ones(1, 6, dtype=torch.float64), metric, 1)
    assert merged.flatten().tolist() == [0.0, 4.0, 1.0, 3.0, 3.5]   # (2 + 5) / 2
    assert sizes.flatten().tolist() == [1.0, 1.0, 1.0, 1.0, 2.0]


@pytest.mark.parametrize("head", HEADS)
def test_tome_sizes_sum_to_the_token_count(head):
    m = model(head)
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        tokens = TokenReduction(m, "tome", tome_r=6).forward_features(video)
    assert tokens.x.shape[1] == N - 24
    assert tokens.weights.sum(1).tolist() == [float(N)] * 2
    assert bool((tokens.weights >= 1).all()) and bool((tokens.weights > 1).any())


@pytest.mark.parametrize("head", HEADS)
def test_tome_proportional_attention_reproduces_duplicated_tokens(head):
    """Merging two identical tokens into one of size 2 changes nothing when attention is
    proportional (log size added to the logits): the merged model equals the full one."""
    m = model(head)
    m.encoder.pos_embed.zero_()                 # so equal pixels give equal tokens
    g = torch.Generator().manual_seed(5)
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=g)
    # token order (t, h, w); ToMe's sets A/B are even/odd positions, i.e. patch columns
    # (0, 1) and (2, 3) of a row.  Copy column 0 onto column 1 in rows 0-1 of every
    # tubelet: 8 A tokens then have an exact duplicate in B, the others none.
    video[..., :2 * PATCH, PATCH:2 * PATCH] = video[..., :2 * PATCH, :PATCH]
    r = 8
    with torch.no_grad():
        tokens = m.encoder.embed(video)
        dup = tokens[:, 0::2] - tokens[:, 1::2]
        assert int((dup.abs().amax(-1) == 0).sum()) == 2 * r   # 8 duplicate pairs a clip
        full = m.classify(video)
        reducer = TokenReduction(m, "tome", tome_r=[r, 0, 0, 0])
        merged = reducer.forward_features(video)
        assert merged.x.shape[1] == N - r
        assert sorted(merged.weights[0].tolist()) == [1.0] * (N - 2 * r) + [2.0] * r
        assert sorted(merged.weights[1].tolist()) == [1.0] * (N - 2 * r) + [2.0] * r
        # the encoder: size-weighted pooled tokens equal the full model's mean token
        torch.testing.assert_close(weighted_mean(merged.x, merged.weights),
                                   m.forward_features(video).mean(1), rtol=1e-5, atol=1e-5)
        # the head (the bridging head attends too); a linear head's logits are ~1e-4
        logits = reducer.forward_head(merged)
        torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5 * full.abs().max().item())


def test_rlt_drops_only_static_tubelets():
    clip, cover = moving_square_clip()
    expected = expected_kept(cover)
    assert 16 < expected.sum() < N                  # some moving tubelets, some static
    keep = rlt_keep(clip, PATCH, 2, threshold=1e-3)[0].numpy()
    np.testing.assert_array_equal(keep, expected)
    change = tubelet_change(clip, PATCH, 2)[0]
    assert bool((change[~torch.from_numpy(expected)] == 0).all())


def test_tubelet_change_is_the_mean_l1_against_the_previous_tubelet():
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    tubelets = patchify(video, PATCH, 2).view(2, 4, 16, -1)          # (B, T', H'W', P)
    expected = (tubelets[:, 1:] - tubelets[:, :-1]).abs().mean(-1).flatten(1)
    change = tubelet_change(video, PATCH, 2)
    assert bool(torch.isinf(change[:, :16]).all())
    torch.testing.assert_close(change[:, 16:], expected)


def test_published_change_is_last_frame_against_the_previous_tubelets_first():
    """RLT's code: tubelet i's last frame (t*i + t - 1) against tubelet i-1's first frame
    (t*(i - 1)), mean |difference| over the patch and channels, computed here by loops."""
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    t, grid_t, grid_s = 2, FRAMES // 2, SIZE // PATCH
    change = tubelet_change(video, PATCH, t, "published").view(2, grid_t, grid_s, grid_s)
    assert bool(torch.isinf(change[:, 0]).all())
    for i in range(1, grid_t):
        for h in range(grid_s):
            for w in range(grid_s):
                cell = (slice(h * PATCH, (h + 1) * PATCH), slice(w * PATCH, (w + 1) * PATCH))
                last = video[:, :, t * i + t - 1][(..., *cell)]
                first = video[:, :, t * (i - 1)][(..., *cell)]
                torch.testing.assert_close(change[:, i, h, w],
                                           (last - first).abs().mean((1, 2, 3)))


def test_the_two_rlt_rules_differ_where_they_must():
    """Static background; in tubelet 1 (frames 2, 3) three patches are built so that:
    A: frames 2, 3 = (c, a) after (a, b): the last frame equals the previous tubelet's
       first, so the published rule sees no change and drops it; the mean rule keeps it;
    B: both frames shifted by exactly the threshold 0.5: the mean rule keeps it (>=),
       the published rule (strict >) drops it;
    C: only frame 3 changes, by 1: mean change 0.5 (frame 2 unchanged) is kept by the
       mean rule at 0.5 but not at 0.75, while the published rule sees 1 and keeps it."""
    video = torch.zeros(1, 3, FRAMES, SIZE, SIZE)
    a, b, c = 0.25, -0.75, 1.0
    pa = (..., slice(0, PATCH), slice(0, PATCH))                   # token (1, 0, 0)
    video[:, :, 0][pa], video[:, :, 1][pa] = a, b
    video[:, :, 2][pa], video[:, :, 3][pa] = c, a
    video[:, :, 4:][pa] = a                                         # later tubelets change
    pb = (..., slice(0, PATCH), slice(PATCH, 2 * PATCH))            # token (1, 0, 1)
    video[:, :, 2:][pb] = 0.5
    pc = (..., slice(0, PATCH), slice(2 * PATCH, 3 * PATCH))        # token (1, 0, 2)
    video[:, :, 3][pc] = 1.0
    tokens = {"A": 16, "B": 17, "C": 18}
    mean = rlt_keep(video, PATCH, 2, 0.5, "mean")[0]
    published = rlt_keep(video, PATCH, 2, 0.5, "published")[0]
    assert [bool(mean[i]) for i in tokens.values()] == [True, True, True]
    assert [bool(published[i]) for i in tokens.values()] == [False, False, True]
    assert not bool(rlt_keep(video, PATCH, 2, 0.75, "mean")[0, tokens["C"]])
    # everywhere else the two agree: the first tubelet kept, the static background dropped
    others = torch.ones(N, dtype=torch.bool)
    others[list(tokens.values())] = False
    others[32:] = False                                             # A's patch in tubelets 2, 3
    assert torch.equal(mean[others], published[others])
    assert mean[:16].all() and not mean[others][16:].any()
    m = model()
    reducer = TokenReduction(m, "rlt", rlt_threshold=0.5, rlt_rule="published")
    assert torch.equal(reducer.keep(video)[0], published)
    assert "published rule" in reducer.describe()


def test_rlt_on_a_static_clip_keeps_the_first_tubelet():
    clip = torch.rand(1, 3, 1, SIZE, SIZE).expand(1, 3, FRAMES, SIZE, SIZE)
    keep = rlt_keep(clip, PATCH, 2, threshold=1e-6)[0]
    assert keep.tolist() == [True] * 16 + [False] * 48


@pytest.mark.parametrize("head", HEADS)
def test_padding_does_not_change_a_clips_logits(head):
    m = model(head)
    moving, _ = moving_square_clip(seed=1)
    static = torch.rand(1, 3, 1, SIZE, SIZE).expand(1, 3, FRAMES, SIZE, SIZE)
    noise = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    batch = torch.cat((moving, static, noise))
    reducer = TokenReduction(m, "rlt", rlt_threshold=1e-3)
    with torch.no_grad():
        together = reducer(batch)
        assert len(set(reducer.counts)) == 3         # three different lengths: padding
        for i in range(3):
            alone = TokenReduction(m, "rlt", rlt_threshold=1e-3)(batch[i:i + 1])
            torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_pad_kept_indices_and_validity():
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    ids, valid = pad_kept(keep)
    assert ids[0].tolist() == [0, 2, 3] and ids[1, :1].tolist() == [1]
    assert valid.tolist() == [[True, True, True], [True, False, False]]


def test_rlt_plus_mar_is_the_intersection():
    m = model()
    clip, _ = moving_square_clip()
    video = torch.cat((clip, torch.randn(1, 3, FRAMES, SIZE, SIZE)))
    cell = make_masking("cell_running", 0.5)(2, GRID, train=False)
    with torch.no_grad():  # threshold 0: RLT keeps everything, so this is MAR's test mask
        assert torch.equal(TokenReduction(m, "rlt+mar", ratio=0.5)(video),
                           m.classify(video, cell))
    reducer = TokenReduction(m, "rlt+mar", ratio=0.5, rlt_threshold=1e-3)
    expected = rlt_keep(video, PATCH, 2, 1e-3) & ~cell.bool()
    assert torch.equal(reducer.keep(video), expected)
    with torch.no_grad():
        reducer(video)
    assert reducer.counts == expected.sum(1).tolist()
    assert reducer.counts[0] < N // 2 and reducer.counts[1] == N // 2


def test_calibrated_threshold_meets_the_budget():
    changes = tubelet_change(torch.randn(6, 3, FRAMES, SIZE, SIZE).cumsum(2), PATCH, 2)
    for fraction in (0.3, 0.5, 0.8):
        t = calibrate_rlt_threshold(changes, fraction)
        assert (changes >= t).float().mean().item() == pytest.approx(fraction, abs=0.01)
    assert calibrate_rlt_threshold(changes, 1.0) == 0.0
    visible = ~make_masking("cell_running", 0.5)(6, GRID, train=False).bool()
    t = calibrate_rlt_threshold(changes, 0.25, visible)
    assert ((changes >= t) & visible).float().mean().item() == pytest.approx(0.25, abs=0.01)
    published = tubelet_change(torch.randn(6, 3, FRAMES, SIZE, SIZE).cumsum(2), PATCH, 2,
                               "published")
    for fraction in (0.3, 0.5, 0.8):                # the published rule keeps change > t
        t = calibrate_rlt_threshold(published, fraction, rule="published")
        assert (published > t).float().mean().item() == pytest.approx(fraction, abs=0.01)
    t = calibrate_rlt_threshold(published, 0.2, rule="published")  # below the first tubelet
    assert t == float("inf")
    clip = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    assert rlt_keep(clip, PATCH, 2, t, "published")[0].tolist() == [True] * 16 + [False] * 48


@pytest.mark.parametrize("head", HEADS)
def test_flops_of_a_reduction(head):
    with torch.device("meta"):
        m = create_model("vit_nano", num_classes=7, num_frames=FRAMES, img_size=SIZE,
                         patch_size=PATCH, head=head)
    full = formula_flops(m, N)
    previous = full
    for r in (2, 6, [16, 8, 4, 2]):
        reducer = TokenReduction(m, "tome", tome_r=r)
        measured = measure_flops(reducer, Mask.full(1, GRID))
        assert measured == reduction_flops(reducer) == formula_flops(m, N, r)
        assert measured < previous
        previous = measured
    drop = TokenReduction(m, "random", ratio=0.5)
    assert measure_flops(drop, Mask.full(1, GRID)) == reduction_flops(drop) == \
        formula_flops(m, N // 2)
    with torch.device("meta"):  # 12 blocks: a constant r in every block, counted alike
        deep = create_model("vit_nano", num_classes=7, num_frames=FRAMES, img_size=SIZE,
                            patch_size=PATCH, head=head, depth=12)
    tome = TokenReduction(deep, "tome", tome_r=3)
    assert measure_flops(tome, Mask.full(1, GRID)) == reduction_flops(tome) == \
        formula_flops(deep, N, [3] * 12) < formula_flops(deep, N)
    rlt = TokenReduction(m, "rlt", rlt_threshold=1.0)
    rlt.counts = [16, 40, 40]
    assert reduction_flops(rlt) == pytest.approx(
        (formula_flops(m, 16) + 2 * formula_flops(m, 40)) / 3)


def test_bad_settings_are_named():
    m = model()
    with pytest.raises(ValueError, match="unknown token reduction 'merge'"):
        TokenReduction(m, "merge")
    with pytest.raises(ValueError, match="tome: r must be >= 0"):
        TokenReduction(m, "tome", tome_r=[1, 2])
    with pytest.raises(ValueError, match="makes its own masks"):
        TokenReduction(m, "tome", tome_r=1).forward_features(
            torch.zeros(1, 3, FRAMES, SIZE, SIZE), make_masking("random", 0.5)(1, GRID))
    with pytest.raises(ValueError, match="can merge 0..3 of 6"):
        bipartite_merge(torch.zeros(1, 6, 2), torch.ones(1, 6), torch.ones(1, 6, 2), 4)
    with pytest.raises(ValueError, match="RLT threshold|rlt: threshold"):
        TokenReduction(m, "rlt", rlt_threshold=-1)
    pos = create_model("vit_nano", num_classes=7, num_frames=FRAMES, img_size=SIZE,
                       patch_size=PATCH, head_pos_embed=True)
    with pytest.raises(ValueError, match="no position embedding"):
        TokenReduction(pos, "tome")
    with pytest.raises(ValueError, match="run clips first"):
        reduction_flops(TokenReduction(m, "rlt", rlt_threshold=1.0))
    with pytest.raises(ValueError, match="unknown RLT rule 'max'; known: mean, published"):
        TokenReduction(m, "rlt", rlt_rule="max")


def test_reduction_cost_of_a_named_model():
    kw = {"num_classes": 7, "num_frames": FRAMES, "img_size": SIZE, "patch_size": PATCH}
    tome = reduction_cost("vit_nano", "tome", tome_r=8, **kw)
    assert tome.gflops == tome.formula_gflops and tome.num_visible == N - 32
    full = reduction_cost("vit_nano", "none", **kw)
    assert full.num_visible == N and tome.gflops < full.gflops
    with pytest.raises(ValueError, match="varies per clip"):
        reduction_cost("vit_nano", "rlt", **kw)


def test_cli_reduce_in_flops_predict_and_eval(tmp_path, capsys):
    """`--reduce` selects a reduction in `mar flops` (counted), `predict` and `eval`."""
    import json

    from videos import moving_square_dataset

    from mar.cli import main
    from mar.config import load_config
    from mar.models.io import save_model

    tiny = ["model.name=vit_nano", "model.num_classes=4", "model.num_frames=8",
            "model.img_size=32", "model.patch_size=8", "data.num_frames=8",
            "data.crop_size=32"]
    assert main(["flops", *tiny, "masking.name=none", "masking.ratio=0", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)["gflops"]
    assert main(["flops", *tiny, "--reduce", "tome", "--tome-r", "4", "--json"]) == 0
    tome = json.loads(capsys.readouterr().out)
    assert tome["reduction"] == "tome" and 0 < tome["gflops"] < full

    cfg = load_config(None, tiny)
    model_dir = save_model(cfg.model.build(), cfg.model.model_dump(mode="json"),
                           tmp_path / "model", masking={"name": "none", "ratio": 0.0})
    videos = moving_square_dataset(tmp_path / "v", per_class=1, seed=0)
    first = tmp_path / "v" / videos.read_text().split()[0]
    assert main(["predict", str(first), "--checkpoint", str(model_dir), "--reduce", "rlt",
                 "--json"]) == 0
    out = capsys.readouterr()
    assert "RLT" in out.err and json.loads(out.out)[0]["error"] is None
    assert main(["eval", "--checkpoint", str(model_dir), *tiny, f"data.root={videos.parent}",
                 f"data.test_list={videos}", "data.test_clips=1", "data.test_crops=1",
                 "--reduce", "random", "--reduce-ratio", "0.5", "--out",
                 str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert summary["videos"] == 4 and summary["mean_tokens"] == 64 / 2
