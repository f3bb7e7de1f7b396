import pytest
import torch

from mar import create_model, make_masking
from mar.flops import (
    PAPER_ROWS,
    deploy_params,
    formula_flops,
    measure_flops,
    model_cost,
    paper_row_cost,
)

TINY = dict(num_classes=7, num_frames=8, img_size=32, patch_size=8)
CONFIGS = [
    dict(head="bridging"),
    dict(head="bridging", head_width=48, head_depth=3, head_heads=3),
    dict(head="bridging", head_mask_tokens=True, head_pos_embed=True),
    dict(head="linear"),
    dict(head="linear", final_norm=False),
    dict(head="mlp", head_width=40, head_depth=2),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
def test_counter_equals_closed_form(kwargs, ratio):
    with torch.device("meta"):
        model = create_model("vit_nano", **TINY, **kwargs)
    mask = make_masking("cell_running", ratio)(1, model.grid, train=False)
    assert measure_flops(model, mask) == formula_flops(model, mask.num_visible)


@pytest.mark.parametrize("patch_size", [14, 16])
@pytest.mark.parametrize("head", ["bridging", "linear"])
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_counter_equals_closed_form_for_vit_giant(patch_size, head, ratio):
    # VideoMAE V2's ViT-g (1408 wide, 40 deep, MLP 6144), full size on the meta device
    with torch.device("meta"):
        model = create_model("vit_giant", num_classes=400, patch_size=patch_size, head=head)
    assert model.encoder.blocks[0].mlp.fc1.out_features == 6144
    mask = make_masking("cell_running", ratio)(1, model.grid, train=False)
    assert measure_flops(model, mask) == formula_flops(model, mask.num_visible)


def test_model_cost_of_vit_giant_and_of_explicit_dims():
    cost = model_cost("vit_giant", None, patch_size=14, head="linear")
    assert cost.num_tokens == 2048 and cost.gflops == cost.formula_gflops
    assert 1.0e9 < cost.params < 1.02e9                     # ViT-g: about 1.01B
    # explicit dims override the table: vit_base's table entry at ViT-g's dims is ViT-g
    same = model_cost("vit_base", None, patch_size=14, head="linear", embed_dim=1408,
                      depth=40, num_heads=16, mlp_ratio=48 / 11)
    assert same == cost
    odd = model_cost("custom", make_masking("cell_running", 0.5), embed_dim=96, depth=3,
                     num_heads=4, mlp_ratio=200 / 96)
    assert odd.gflops == odd.formula_gflops and odd.num_visible == 784


def test_meta_count_equals_count_on_real_weights():
    real = create_model("vit_nano", **TINY, decoder=True)
    with torch.device("meta"):
        meta = create_model("vit_nano", **TINY)
    mask = make_masking("cell_running", 0.5)(1, real.grid, train=False)
    assert measure_flops(real, mask) == measure_flops(meta, mask)
    # on CPU with real tensors SDPA would run a fused kernel the counter cannot see; the
    # count must still include the attention products, as the closed form does
    assert measure_flops(real, mask) == formula_flops(real, mask.num_visible)
    # the decoder is training-only: neither counted nor in the deploy parameters
    assert deploy_params(real) == sum(p.numel() for p in meta.parameters())


@pytest.mark.parametrize("row", PAPER_ROWS, ids=lambda r: f"{r.source}: {r.setting}")
def test_paper_gflops_within_half_a_percent(row):
    cost = paper_row_cost(row)
    assert abs(cost.gflops / row.gflops - 1) < 0.005
    if row.params_m is not None:  # the paper rounds to 1M
        assert abs(cost.params / 1e6 - row.params_m) < 1.5


def test_cli_flops_says_what_a_reduction_keeps_and_no_mask(capsys):
    """`mar flops --reduce random` replaces the test mask: its output names the reduction
    and its ratio, and no cell running mask at 0.5 beside a count that a mask would not
    give (1176 of 1568 tokens are 25 % dropped, not 50 % masked)."""
    import json

    from mar.cli import main

    assert main(["flops", "--reduce", "random", "--reduce-ratio", "0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["reduction"], out["reduction_ratio"]) == ("random", 0.25)
    assert (out["masking"], out["ratio"]) == ("none", 0.0)
    assert (out["visible_tokens"], out["tokens"]) == (1176, 1568)
    assert main(["flops", "--reduce", "random", "--reduce-ratio", "0.25"]) == 0
    text = capsys.readouterr().out
    lines = dict(line.strip().split(": ", 1) for line in text.splitlines())
    assert lines["reduction"] == "random" and lines["reduction_ratio"] == "0.25"
    assert lines["masking"] == "none" and lines["visible_tokens"] == "1176"
    assert main(["flops"]) == 0                         # no reduction: the test mask
    lines = dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["reduction"] == "none" and lines["masking"] == "cell_running"
    assert lines["ratio"] == "0.5" and lines["visible_tokens"] == "784"
