"""Per-view cost (GFLOPs, parameters) of a model and masking setting.

Convention, the one behind the paper's numbers (fvcore, as the MAR and VideoMAE code
count): one multiply-accumulate is one FLOP, for convolutions, linear layers and the
two attention matrix products (Q K^T and A V); an affine LayerNorm costs 5 per element
of its input. Softmax, GELU, additions and pooling are free. A view is one clip at
batch 1 in evaluation; the reconstruction decoder is training-only and not counted.

Two independent counts: :func:`measure_flops` runs the deploy path under PyTorch's
``FlopCounterMode`` with the math attention kernel (a fused SDPA kernel is invisible to
the counter on CPU) on the meta device, so no arithmetic is done; :func:`formula_flops`
is the closed form. The tests hold them equal.

A test-time token reduction (``mar.models.token_reduction``) is counted the same way:
ToMe's blocks shrink one by one (attention on the tokens entering a block, MLP on those
left after merging, plus the key-similarity product of the matching); RLT keeps a
different count per clip, so its cost is the mean over clips of each clip alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .masking import Mask, MaskingStrategy, make_masking
from .models import MAR, BridgingHead, LinearHead, MLPHead, create_model
from .models.token_reduction import TokenReduction, tome_schedule, tome_token_counts

aten = torch.ops.aten


def _layer_norm_count(input_shape, normalized_shape, weight=None, bias=None, *args,
                      out_shape=None, **kwargs) -> int:
    # FlopCounterMode counts 2 per multiply-accumulate; 10 here is 5 in our convention
    return (10 if weight is not None else 8) * math.prod(input_shape)


def measure_flops(model: MAR, mask: Mask) -> int:
    """Count the deploy path (encoder + head) for one clip, batch 1, in FLOPs (= MACs).

    Build the model on the meta device (``with torch.device("meta"): create_model(...)``)
    to count without computing; a model with real weights works too, only slower.
    """
    if mask.batch_size != 1:
        raise ValueError(f"count one view: the mask has batch size {mask.batch_size}")
    device = next(model.parameters()).device
    pe = model.encoder.patch_embed
    t, h, w = model.grid
    video = torch.zeros(1, pe.proj.in_channels, t * pe.tubelet_size, h * pe.patch_size,
                        w * pe.patch_size, device=device)
    mask = mask.to(device)
    counter = FlopCounterMode(display=False,
                              custom_mapping={aten.native_layer_norm: _layer_norm_count})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            if model.head is not None:
                model.classify(video, mask)
            else:                               # a pretraining encoder: no classifier
                model.forward_features(video, mask)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _layer_norm(n: int, d: int) -> int:
    return 5 * n * d


def _block(n: int, d: int, hidden: int) -> int:
    """One pre-norm transformer block on n tokens of width d."""
    return 4 * n * d * d + 2 * n * d * hidden + 2 * n * n * d + 2 * _layer_norm(n, d)


def _blocks(blocks: nn.ModuleList, n: int) -> int:
    return sum(_block(n, b.norm1.normalized_shape[0], b.mlp.fc1.out_features) for b in blocks)


def _merging_blocks(blocks: nn.ModuleList, n: int, schedule: list[int]) -> tuple[int, int]:
    """ToMe blocks: attention on the tokens entering, the A x B key similarity (keys
    averaged over heads, width head_dim) of the r merged, the MLP on those left. Returns
    (FLOPs, tokens leaving the last block)."""
    total = 0
    for b, (n_in, r) in zip(blocks, tome_token_counts(n, schedule), strict=True):
        d, hidden = b.norm1.normalized_shape[0], b.mlp.fc1.out_features
        n_out = n_in - r
        total += 4 * n_in * d * d + 2 * n_in * n_in * d + _layer_norm(n_in, d)  # attention
        if r:
            total += ((n_in + 1) // 2) * (n_in // 2) * (d // b.attn.num_heads)  # matching
        total += 2 * n_out * d * hidden + _layer_norm(n_out, d)                # MLP
        n = n_out
    return total, n


def formula_flops(model: MAR, num_visible: int, tome_r: int | list[int] = 0) -> int:
    """Closed-form count for one clip with ``num_visible`` tokens entering the encoder
    blocks, and ToMe merging ``tome_r`` tokens per block (an int or one per block)."""
    enc = model.encoder
    n_all, d = enc.num_tokens, enc.embed_dim
    conv = enc.patch_embed.proj
    total = n_all * conv.in_channels * math.prod(conv.kernel_size) * d
    schedule = tome_schedule(tome_r, len(enc.blocks))
    if any(schedule):
        blocks, num_visible = _merging_blocks(enc.blocks, num_visible, schedule)
        total += blocks
    else:
        total += _blocks(enc.blocks, num_visible)
    if isinstance(enc.norm, nn.LayerNorm):
        total += _layer_norm(num_visible, d)
    head = model.head
    if head is None:
        return total
    if isinstance(head, LinearHead):
        return total + _layer_norm(1, d) + d * head.head.out_features
    width = head.proj.out_features
    total += num_visible * d * width + _layer_norm(1, width) + width * head.head.out_features
    if isinstance(head, MLPHead):
        return total + sum(m.in_features * m.out_features for m in head.mlp
                           if isinstance(m, nn.Linear))
    if not isinstance(head, BridgingHead):
        raise TypeError(f"no formula for head {type(head).__name__}")
    n_head = n_all if head.mask_token is not None and num_visible < n_all else num_visible
    return total + _blocks(head.blocks, n_head)


def reduction_flops(reducer: TokenReduction) -> float:
    """FLOPs per view of a token reduction: ToMe's shrinking blocks; for RLT, whose
    count varies per clip, the mean of the per-clip counts over the clips it has seen
    (each clip alone at batch 1, so padding in a batch is not counted)."""
    model, n = reducer.model, reducer.encoder.num_tokens
    if reducer.method == "tome":
        return float(formula_flops(model, n, reducer.tome_r))
    if reducer.method == "random":
        return float(formula_flops(model, n - int(reducer.ratio * n + 1e-6)))
    if reducer.method == "none":
        return float(formula_flops(model, n))
    if not reducer.counts:
        raise ValueError(f"{reducer.method}: the count varies per clip; run clips first")
    per_count = {c: formula_flops(model, c) for c in set(reducer.counts)}
    return sum(per_count[c] for c in reducer.counts) / len(reducer.counts)


def deploy_params(model: MAR) -> int:
    """Parameters of the deploy model: everything but the reconstruction decoder."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not name.startswith("decoder."))


@dataclass(frozen=True)
class Cost:
    gflops: float
    formula_gflops: float
    params: int
    num_visible: int
    num_tokens: int


def model_cost(name: str = "vit_base", masking: MaskingStrategy | None = None,
               **model_kwargs) -> Cost:
    """Per-view cost of ``create_model(name, **model_kwargs)`` under ``masking``'s eval mask.

    The model is built on the meta device: counting ViT-H takes well under a second.
    """
    masking = masking or make_masking("none")
    model_kwargs = {**model_kwargs, "decoder": False}
    with torch.device("meta"):
        model = create_model(name, **model_kwargs)
    mask = masking(1, model.grid, train=False)
    return Cost(measure_flops(model, mask) / 1e9,
                formula_flops(model, mask.num_visible) / 1e9,
                deploy_params(model), mask.num_visible, mask.num_tokens)


def reduction_cost(name: str, method: str, ratio: float = 0.0, tome_r: int | list[int] = 0,
                   **model_kwargs) -> Cost:
    """Per-view cost of ``create_model(name, **model_kwargs)`` under a test-time token
    reduction whose cost does not depend on the clip (``none``, ``random``, ``tome``);
    ``num_visible`` is the count leaving the encoder. RLT's cost is a mean over real
    clips: run them, then :func:`reduction_flops`."""
    if method in ("rlt", "rlt+mar"):
        raise ValueError(f"{method}: the token count varies per clip; evaluate clips "
                         "(e.g. `mar eval --reduce rlt`) to get the mean cost")
    with torch.device("meta"):
        model = create_model(name, **{**model_kwargs, "decoder": False})
    reducer = TokenReduction(model, method, ratio=ratio, tome_r=tome_r)
    n = model.encoder.num_tokens
    if method == "tome":
        left = n - sum(r for _, r in tome_token_counts(n, reducer.tome_r))
    else:
        left = n - int(ratio * n + 1e-6) if method == "random" else n
    return Cost(measure_flops(reducer, Mask.full(1, model.grid)) / 1e9,
                reduction_flops(reducer) / 1e9, deploy_params(model), left, n)


@dataclass(frozen=True)
class PaperRow:
    """One per-view GFLOPs figure of the paper and the setting that produces it."""

    source: str
    setting: str
    gflops: float
    model: dict = field(default_factory=dict)
    ratio: float = 0.5
    params_m: float | None = None


def _b(**kw) -> dict:
    return {"name": "vit_base", "num_classes": 174, **kw}


PAPER_ROWS: list[PaperRow] = [
    PaperRow("Table II", "ViT-B, cell running 25%, bridging", 138.04, _b(), 0.25),
    PaperRow("Table II", "ViT-B, cell running 50%, bridging", 86.35, _b(), 0.5),
    PaperRow("Table II", "ViT-B, cell running 75%, bridging", 40.95, _b(), 0.75),
    PaperRow("Table II", "ViT-B, 112^2 input (D.S. 2x), no mask, bridging", 39.56,
             _b(img_size=112), 0.0),
    PaperRow("Table III(c)", "ViT-B, no mask, bridging", 196.03, _b(), 0.0),
    PaperRow("Table VI", "ViT-B 50%, linear", 79.84, _b(head="linear")),
    PaperRow("Table VI", "ViT-B 50%, MLP width 512 depth 2", 80.15,
             _b(head="mlp", head_width=512, head_depth=2)),
    *(PaperRow("Table VI", f"ViT-B 50%, bridging width {w} depth {d}", g,
               _b(head_width=w, head_depth=d))
      for w, d, g in [(256, 1, 80.93), (256, 2, 81.86), (256, 4, 83.73), (256, 8, 87.46),
                      (384, 1, 81.93), (384, 2, 83.80), (384, 4, 87.52),
                      (512, 1, 83.25), (512, 2, 86.35), (512, 4, 92.55),
                      (640, 1, 84.87), (640, 2, 89.52), (640, 4, 98.81)]),
    PaperRow("Table VII", "ViT-B 50%, bridging + pos. emb.", 86.35,
             _b(head_pos_embed=True)),
    PaperRow("Table VII", "ViT-B 50%, bridging + mask tokens + pos. emb.", 95.06,
             _b(head_pos_embed=True, head_mask_tokens=True)),
    PaperRow("Table XI", "ViT-B, no mask, linear (VideoMAE)", 180,
             {"name": "vit_base", "head": "linear"}, 0.0, 87),
    PaperRow("Table XI", "ViT-B, MAR 75%", 41, {"name": "vit_base"}, 0.75, 94),
    PaperRow("Table XI", "ViT-B, MAR 50%", 86, {"name": "vit_base"}, 0.5, 94),
    PaperRow("Table XI", "ViT-L, no mask, linear (VideoMAE)", 597,
             {"name": "vit_large", "head": "linear"}, 0.0, 305),
    PaperRow("Table XI", "ViT-L, MAR 75%", 131, {"name": "vit_large"}, 0.75, 311),
    PaperRow("Table XI", "ViT-L, MAR 50%", 276, {"name": "vit_large"}, 0.5, 311),
    PaperRow("Table XI", "ViT-H, no mask, linear (MAE-ST)", 1193,
             {"name": "vit_huge", "head": "linear"}, 0.0, 632),
]


def paper_row_cost(row: PaperRow) -> Cost:
    """Our count for a paper row: cell running masking (2x2) at the row's ratio."""
    kwargs = dict(row.model)
    name = kwargs.pop("name")
    masking = make_masking("cell_running", ratio=row.ratio) if row.ratio else None
    return model_cost(name, masking, **kwargs)
