"""Training-free token reduction at inference, for any of our encoders.

The alternatives MAR's masking is measured against (``benchmarks/bench_token_reduction.py``,
``docs/token_reduction.md``), all applied to an already fine-tuned model, no retraining:

- ``random``: drop a fraction ``ratio`` of the tokens uniformly at random (a test-time
  :class:`~mar.masking.Mask`, drawn from a seeded generator).
- ``tome``: Token Merging (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023).
  In every encoder block, between attention and MLP, ``r`` tokens are merged into their most
  similar partner by bipartite soft matching on the attention keys; merged tokens are
  size-weighted averages, sizes are tracked, and attention is proportional (``log size``
  added to the logits of every query for that key). The head pools with sizes as weights.
- ``rlt``: Run-Length Tokenization, training-free form (Choudhury et al., "Don't Look Twice:
  Faster Video Transformers with Run-Length Tokenization", NeurIPS 2024). A tubelet whose
  pixels differ from the same location in the previous tubelet by less than a threshold
  (mean absolute difference of the normalised input pixels) is a repeat and is dropped;
  the first tubelet is always kept. Two rules (:data:`RLT_RULES`) say what "differ" is:
  ``mean`` (ours) averages frame f against frame f - t over the tubelet's t frame pairs
  and keeps a change ``>=`` the threshold; ``published`` is the authors' code
  (``batched_find_idxs_to_keep``): the last frame of tubelet i against the first frame of
  tubelet i - 1, kept when the change is strictly ``>`` the threshold. The count varies
  per clip: a batch is padded to its longest clip and the padding is hidden from
  attention and pooling. The paper's learned length encoding needs training and is left
  out.
- ``rlt+mar``: RLT, then MAR's cell running mask over what is left (defined below).

Definition of RLT + MAR: a token is kept iff RLT keeps it **and** the deterministic
evaluation cell running mask at ``ratio`` leaves it visible (the intersection of the two
keep sets, both on the original token grid). The running mask keeps its guarantee on the
grid (every 2 x 2 cell of every frame has a visible slot), RLT then removes those visible
slots that repeat the previous tubelet. We chose the intersection over re-running the mask
on the survivors (which have no grid) because it keeps MAR's spatial coverage, is the same
mask the MAR model was tested with, and needs no new hyper-parameter; the cost is that
the kept count is about (1 - ratio) x RLT's, not a fixed budget.

How the padding, the sizes and "every token" share one code path: each token carries a
weight (ToMe: its size; RLT padding: 0; otherwise 1). The attention bias is ``log weight``
(log 0 = -inf hides a padded key; log size is proportional attention) and the head pools
``sum(w x) / sum(w)``. With nothing reduced no weights exist and the plain model runs, so
zero reduction equals the full model exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..masking import Mask, gather_tokens, make_masking
from .heads import BridgingHead, LinearHead, MLPHead
from .mar import MAR

METHODS = ("none", "random", "tome", "rlt", "rlt+mar")
RLT_RULES = ("mean", "published")  # how RLT measures a tubelet's change (module docstring)


class Tokens(NamedTuple):
    """Encoder output under a reduction.

    x: (B, M, D); weights: (B, M) token sizes, 0 for padding, or None when every token
    counts once (the plain model's case); mask: the random drop's mask, which a head with
    a position embedding needs.
    """

    x: Tensor
    weights: Tensor | None
    mask: Mask | None = None


def attention_bias(weights: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, M) token weights -> additive attention bias (B, 1, 1, M): log weight."""
    if weights is None:
        return None
    return weights.log().to(dtype)[:, None, None, :]


def weighted_mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """(B, M, D) -> (B, D): mean over tokens, each counted ``weight`` times."""
    if weights is None:
        return x.mean(1)
    w = weights.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1)


def random_drop_mask(batch_size: int, grid: tuple[int, int, int], ratio: float,
                     generator: torch.Generator) -> Mask:
    """Drop ``ratio`` of the tokens of each clip uniformly at random (floored count)."""
    return make_masking("random", ratio)(batch_size, grid, train=True, generator=generator)


# ---------------------------------------------------------------- RLT
def tubelet_change(video: Tensor, patch_size: int, tubelet_size: int,
                   rule: str = "mean") -> Tensor:
    """How much each tubelet differs from the same location one tubelet earlier.

    (B, C, T, H, W) normalised input -> (B, N) mean absolute difference, in (t, h, w)
    token order; +inf for the first tubelet, which has no predecessor. ``rule="mean"``:
    over the tubelet's t*p*p*C values, frame f against frame f - t; ``"published"``
    (RLT's code): over p*p*C values, the tubelet's last frame against the previous
    tubelet's first frame (frame t*i + t - 1 against frame t*(i - 1)).
    """
    b, c, frames, h, w = video.shape
    t, p = tubelet_size, patch_size
    if rule == "mean":
        diff = (video[:, :, t:] - video[:, :, :-t]).abs().float()       # (B, C, T-t, H, W)
        diff = diff.view(b, c, frames // t - 1, t, h // p, p, w // p, p).mean((1, 3, 5, 7))
    elif rule == "published":
        last, first = video[:, :, 2 * t - 1::t], video[:, :, :-t:t]     # (B, C, T/t-1, H, W)
        diff = (last - first).abs().float()
        diff = diff.view(b, c, frames // t - 1, h // p, p, w // p, p).mean((1, 4, 6))
    else:
        raise ValueError(f"unknown RLT rule {rule!r}; known: {', '.join(RLT_RULES)}")
    first = diff.new_full((b, 1, h // p, w // p), math.inf)
    return torch.cat((first, diff), 1).flatten(1)


def rlt_keep(video: Tensor, patch_size: int, tubelet_size: int, threshold: float,
             rule: str = "mean") -> Tensor:
    """(B, N) bool, True = kept: the tubelet changed by at least ``threshold`` (``mean``)
    or by more than it (``published``); the first tubelet is always kept."""
    if threshold < 0:
        raise ValueError(f"rlt: threshold must be >= 0, got {threshold}")
    change = tubelet_change(video, patch_size, tubelet_size, rule)
    if rule == "mean":
        return change >= threshold
    return (change > threshold) | torch.isinf(change)      # inf: the first tubelet


def calibrate_rlt_threshold(changes: Tensor, keep_fraction: float,
                            candidates: Tensor | None = None, rule: str = "mean") -> float:
    """The RLT threshold that keeps ``keep_fraction`` of all tokens on average.

    ``changes``: (B, N) from :func:`tubelet_change` on unlabelled calibration clips;
    ``candidates``: (B, N) bool, the tokens another rule (the running mask) leaves, so
    that the kept fraction is that of the kept changes within them. With k =
    round(keep_fraction * B * N), the result is the k-th largest change for ``mean``
    (kept: ``>=``) and the (k+1)-th for ``published`` (kept: ``>``); 0 keeps all
    candidates (``published``: all that changed at all), inf only the first tubelet.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"rlt: keep fraction must be in (0, 1], got {keep_fraction}")
    if rule not in RLT_RULES:
        raise ValueError(f"unknown RLT rule {rule!r}; known: {', '.join(RLT_RULES)}")
    values = changes[candidates] if candidates is not None else changes.flatten()
    k = round(keep_fraction * changes.numel())
    if k >= values.numel():
        return 0.0
    ranked = values.sort(descending=True).values
    return float(ranked[max(k, 1) - 1] if rule == "mean" else ranked[k])


def pad_kept(keep: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N) bool keep -> indices (B, M) of the kept tokens, ascending, padded to the
    longest clip M, and (B, M) bool valid (False = padding)."""
    counts = keep.sum(1)
    m = int(counts.max())
    ids = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=keep.device) < counts[:, None]
    return ids, valid


# ---------------------------------------------------------------- ToMe
def bipartite_merge(x: Tensor, sizes: Tensor, metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's bipartite soft matching: merge ``r`` tokens of each clip.

    x: (B, M, D); sizes: (B, M) how many input tokens each one stands for; metric:
    (B, M, K) the similarity features (ToMe: keys averaged over heads). Tokens alternate
    into sets A (even positions) and B (odd); each A token links to its most similar B
    token by cosine similarity; the ``r`` A tokens with the strongest links are merged into
    their partners as size-weighted averages, so ``sum(size * x)`` and ``sum(size)`` are
    unchanged. Returns (B, M - r, D) and (B, M - r): unmerged A tokens, then B.
    """
    if not 0 <= r <= x.shape[1] // 2:
        raise ValueError(f"tome: can merge 0..{x.shape[1] // 2} of {x.shape[1]} tokens, "
                         f"asked for {r}")
    if r == 0:
        return x, sizes
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)          # (B, |A|, |B|)
    best, partner = scores.max(-1)                                      # (B, |A|)
    order = best.argsort(-1, descending=True)
    src, kept = order[:, :r], order[:, r:].sort(-1).values
    dst = partner.gather(1, src)                                        # (B, r)
    xa, xb = x[:, ::2], x[:, 1::2]
    sa, sb = sizes[:, ::2], sizes[:, 1::2]
    moved = gather_tokens(xa * sa.unsqueeze(-1), src)                   # (B, r, D) mass
    mass = (xb * sb.unsqueeze(-1)).scatter_add(
        1, dst.unsqueeze(-1).expand(-1, -1, x.shape[-1]), moved)
    sb = sb.scatter_add(1, dst, sa.gather(1, src))
    x = torch.cat((gather_tokens(xa, kept), mass / sb.unsqueeze(-1)), 1)
    return x, torch.cat((sa.gather(1, kept), sb), 1)


def tome_schedule(r: int | Sequence[int], depth: int) -> list[int]:
    """Tokens to merge in each of ``depth`` blocks: a constant ``r`` or one per block."""
    out = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
    if len(out) != depth or min(out, default=0) < 0:
        raise ValueError(f"tome: r must be >= 0, one value or {depth} values; got {r}")
    return out


def tome_token_counts(num_tokens: int, schedule: Sequence[int]) -> list[tuple[int, int]]:
    """(tokens entering the block, tokens merged in it) per block; r is capped at half."""
    out, n = [], num_tokens
    for r in schedule:
        r = min(r, n // 2)
        out.append((n, r))
        n -= r
    return out


# ---------------------------------------------------------------- heads
def head_logits(head: nn.Module, x: Tensor, weights: Tensor | None,
                mask: Mask | None = None) -> Tensor:
    """A classification head over weighted tokens: pooling is ``weighted_mean`` and the
    bridging head's blocks get the same attention bias as the encoder's. Without weights,
    the head itself (with ``mask``)."""
    if weights is None:
        return head(x, mask)
    if isinstance(head, LinearHead):
        return head.head(head.dropout(head.fc_norm(weighted_mean(x, weights))))
    if isinstance(head, MLPHead):
        pooled = head.mlp(weighted_mean(head.proj(x), weights))
        return head.head(head.dropout(head.norm(pooled)))
    if isinstance(head, BridgingHead):
        x = head.proj(x)
        bias = attention_bias(weights, x.dtype)
        for block in head.blocks:
            x = block(x, bias)
        return head.head(head.dropout(head.norm(weighted_mean(x, weights))))
    raise TypeError(f"token reduction: no weighted pooling for head {type(head).__name__}")


# ---------------------------------------------------------------- the wrapper
class TokenReduction(nn.Module):
    """A trained :class:`~mar.models.MAR` model run with a test-time token reduction.

    Same interface as the model, so ``evaluate`` / ``predict`` / ``measure_flops`` take it
    in its place: ``forward_features(video, mask) -> Tokens``, ``forward_head(tokens) ->
    logits``, ``classify(video) -> logits``. It makes its own masks; the ``mask`` argument
    must keep every token (evaluate it with masking ``none``).

    method: one of :data:`METHODS`. ratio: the fraction dropped (``random``) or masked by
    the cell running mask (``rlt+mar``). tome_r: tokens merged per encoder block (an int or
    one per block). rlt_threshold: mean absolute pixel change below which a tubelet is a
    repeat. rlt_rule: how a tubelet's change is measured (:data:`RLT_RULES`: ``mean``,
    ours, or ``published``, RLT's code). seed: the generator of ``random``. ``counts``
    collects the tokens each clip had entering the encoder blocks (for RLT's mean kept
    tokens and mean FLOPs).
    """

    def __init__(self, model: MAR, method: str = "none", ratio: float = 0.0,
                 tome_r: int | Sequence[int] = 0, rlt_threshold: float = 0.0,
                 rlt_rule: str = "mean", seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown token reduction {method!r}; known: {', '.join(METHODS)}")
        if not 0 <= ratio < 1:
            raise ValueError(f"{method}: ratio must be in [0, 1), got {ratio}")
        if rlt_threshold < 0:
            raise ValueError(f"rlt: threshold must be >= 0, got {rlt_threshold}")
        if rlt_rule not in RLT_RULES:
            raise ValueError(f"unknown RLT rule {rlt_rule!r}; known: {', '.join(RLT_RULES)}")
        head = model.head
        if method in ("tome", "rlt", "rlt+mar") and isinstance(head, BridgingHead) and (
                head.pos_embed is not None or head.mask_token is not None):
            raise ValueError(f"{method}: the bridging head must have no position embedding "
                             "and no mask tokens (merged or padded tokens have no slot)")
        self.model = model
        self.method = method
        self.ratio = float(ratio)
        self.tome_r = tome_schedule(tome_r, len(model.encoder.blocks))
        self.rlt_threshold = float(rlt_threshold)
        self.rlt_rule = rlt_rule
        self.generator = torch.Generator().manual_seed(seed)
        self.counts: list[int] = []
        self.visible = None  # (1, N) bool: the evaluation cell running mask, drawn once
        if method == "rlt+mar" and ratio > 0:
            self.visible = ~make_masking("cell_running", ratio)(1, self.grid,
                                                                 train=False).bool()

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.model.grid

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def head(self) -> nn.Module | None:
        return self.model.head

    def describe(self) -> str:
        """One line naming the reduction and its setting."""
        if self.method == "random":
            return f"random drop {self.ratio:.0%}"
        if self.method == "tome":
            n = self.model.encoder.num_tokens
            left = n - sum(r for _, r in tome_token_counts(n, self.tome_r))
            r = self.tome_r[0] if len(set(self.tome_r)) == 1 else self.tome_r
            return f"ToMe r={r} per block ({n} -> {left} tokens)"
        rule = "" if self.rlt_rule == "mean" else f" ({self.rlt_rule} rule)"
        if self.method == "rlt":
            return f"RLT threshold {self.rlt_threshold:g}{rule}"
        if self.method == "rlt+mar":
            return (f"RLT threshold {self.rlt_threshold:g}{rule} + cell running "
                    f"{self.ratio:.0%}")
        return "none (all tokens)"

    def keep(self, video: Tensor) -> Tensor:
        """(B, N) bool, True = kept, for ``rlt`` and ``rlt+mar``."""
        pe = self.model.encoder.patch_embed
        keep = rlt_keep(video, pe.patch_size, pe.tubelet_size, self.rlt_threshold,
                        self.rlt_rule)
        if self.visible is not None:
            keep = keep & self.visible.to(keep.device)
        return keep

    def forward_features(self, video: Tensor, mask: Mask | None = None) -> Tokens:
        if mask is not None and mask.num_masked:
            raise ValueError(f"token reduction {self.method!r} makes its own masks; got a "
                             f"mask hiding {mask.num_masked} tokens (use masking 'none')")
        enc = self.model.encoder
        b = video.shape[0]
        if self.method == "random":
            drop = random_drop_mask(b, self.grid, self.ratio, self.generator).to(video.device)
            self.counts += [drop.num_visible] * b
            return Tokens(self.model.forward_features(video, drop), None, drop)
        x = enc.embed(video)                                            # (B, N, D)
        weights = None
        if self.method in ("rlt", "rlt+mar"):
            keep = self.keep(video)
            self.counts += keep.sum(1).tolist()
            if not bool(keep.all()):
                ids, valid = pad_kept(keep)
                x = gather_tokens(x, ids)                               # (B, M, D)
                weights = None if bool(valid.all()) else valid.to(x.dtype)
        if self.method == "tome":
            x, weights = self._merge_blocks(x)
        else:
            bias = attention_bias(weights, x.dtype)
            for block in enc.blocks:
                x = block(x, bias)
        if self.method in ("none", "tome"):
            self.counts += [enc.num_tokens] * b
        return Tokens(enc.norm(x), weights)

    def _merge_blocks(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The encoder blocks with ToMe between attention and MLP; returns the sizes."""
        sizes = None
        for block, r in zip(self.model.encoder.blocks, self.tome_r, strict=True):
            out, keys = block.attn.attend(block.norm1(x), attention_bias(sizes, x.dtype))
            x = x + block.drop_path(out)
            r = min(r, x.shape[1] // 2)
            if r:
                if sizes is None:
                    sizes = x.new_ones(x.shape[:2])
                x, sizes = bipartite_merge(x, sizes, keys.mean(1), r)
            x = x + block.drop_path(block.mlp(block.norm2(x)))
        return x, sizes

    def forward_head(self, tokens: Tokens, mask: Mask | None = None) -> Tensor:
        return head_logits(self.model.head, tokens.x, tokens.weights, tokens.mask)

    def classify(self, video: Tensor, mask: Mask | None = None) -> Tensor:
        """(B, C, T, H, W) -> logits (B, K), as :meth:`mar.models.MAR.classify`."""
        return self.forward_head(self.forward_features(video, mask))

    forward = classify

    def mean_kept_tokens(self) -> float:
        """Mean tokens per clip entering the encoder blocks, over the clips seen."""
        return sum(self.counts) / len(self.counts) if self.counts else float("nan")
