"""Mask strategies: which tokens the encoder sees (paper §III-B, Fig. 3-4, Tables II-IV).

Tokens are numbered in (t, h, w) order over the token grid (T', H', W') =
(frames / tubelet, height / patch, width / patch). Every strategy is a small frozen
dataclass called as ``strategy(batch_size, grid, train, generator)`` and returns a
:class:`Mask` holding, per sample, the indices of the visible and of the masked tokens.
All samples of a batch have the same visible count, so batches stack without padding.

A *running* mask starts from a pattern inside each running cell (r x q tokens, numbered
row-major) and, frame by frame, moves every masked slot one position forward in that
order, cyclically (paper eq. 1). Cell running masking uses small cells (2 x 2); uniform,
random and block running masking use one cell as large as the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from einops import rearrange
from torch import Tensor

Grid = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class Mask:
    """Visible and masked token indices, each ascending, for a batch of clips.

    ``ids_keep``: (B, N_visible) int64; ``ids_mask``: (B, N_masked) int64; together a
    permutation of ``range(N)`` per sample, N = T' * H' * W'.
    """

    ids_keep: Tensor
    ids_mask: Tensor
    grid: Grid

    @property
    def batch_size(self) -> int:
        return self.ids_keep.shape[0]

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_visible(self) -> int:
        return self.ids_keep.shape[1]

    @property
    def num_masked(self) -> int:
        return self.ids_mask.shape[1]

    def bool(self) -> Tensor:
        """(B, N) boolean, True = masked (the VideoMAE / transformers convention)."""
        out = torch.zeros(self.batch_size, self.num_tokens, dtype=torch.bool,
                          device=self.ids_keep.device)
        return out.scatter_(1, self.ids_mask, True)

    def to(self, device: torch.device | str) -> Mask:
        return Mask(self.ids_keep.to(device), self.ids_mask.to(device), self.grid)

    @classmethod
    def from_bool(cls, masked: Tensor, grid: Grid) -> Mask:
        """From a boolean mask, True = masked, shaped (B, N) or (B, T', H', W')."""
        masked = masked.reshape(masked.shape[0], -1)
        if masked.shape[1] != math.prod(grid):
            raise ValueError(f"mask has {masked.shape[1]} tokens, grid {grid} has "
                             f"{math.prod(grid)}")
        counts = masked.sum(1)
        if bool((counts != counts[0]).any()):
            raise ValueError(f"every sample must mask the same number of tokens; got "
                             f"{sorted(set(counts.tolist()))}")
        num_visible = masked.shape[1] - int(counts[0])
        # stable sort: visible tokens (0) first, each group in ascending token order
        ids = torch.argsort(masked.to(torch.uint8), dim=1, stable=True)
        return cls(ids[:, :num_visible], ids[:, num_visible:], tuple(grid))

    @classmethod
    def full(cls, batch_size: int, grid: Grid, device: torch.device | str = "cpu") -> Mask:
        """Nothing masked: every token visible."""
        n = math.prod(grid)
        ids = torch.arange(n, device=device).expand(batch_size, n)
        return cls(ids, ids[:, :0], tuple(grid))


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Pick tokens by index: (B, N, D), (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _count(ratio: float, n: int) -> int:
    """Masked count for ``ratio`` of ``n`` positions, floored as VideoMAE does."""
    return int(ratio * n + 1e-6)


def _rand_subset(batch: tuple[int, ...], n: int, k: int, generator) -> Tensor:
    """Boolean (*batch, n) with exactly k random True per row."""
    noise = torch.rand(*batch, n, generator=generator)
    ranks = noise.argsort(-1).argsort(-1)
    return ranks < k


def _block(h: int, w: int, k: int, generator) -> Tensor:
    """One random rectangular block of exactly k masked positions in an (h, w) frame.

    The block has a log-uniform aspect ratio in [1/3, 3]; its last row is filled only as
    far as needed, so the count is exact.
    """
    mask = torch.zeros(h, w, dtype=torch.bool)
    if k == 0:
        return mask
    log_r = (torch.rand(1, generator=generator).item() * 2 - 1) * math.log(3)
    bh = min(h, max(1, round(math.sqrt(k * math.exp(log_r)))))
    bw = min(w, math.ceil(k / bh))
    bh = math.ceil(k / bw)
    top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
    block = torch.zeros(bh * bw, dtype=torch.bool)
    block[:k] = True
    mask[top:top + bh, left:left + bw] = block.view(bh, bw)
    return mask


def _run(base: Tensor, steps: int, start: Tensor) -> Tensor:
    """Running masks: (B, C, P) cell patterns, (B, C) start offsets -> (B, steps, C, P).

    At step t the pattern is rotated forward by ``start + t`` positions
    ([1,1,0,0] -> [0,1,1,0] -> [0,0,1,1] -> [1,0,0,1]).
    """
    p = base.shape[-1]
    t = torch.arange(steps).view(1, steps, 1, 1)
    src = (torch.arange(p).view(1, 1, 1, p) - start[:, None, :, None] - t) % p
    return torch.gather(base.unsqueeze(1).expand(-1, steps, -1, -1), 3, src)


def _shuffle_time(masked: Tensor, generator) -> Tensor:
    """Randomly permute the T' frame masks of each sample: (B, T', ...) -> same."""
    b, t = masked.shape[:2]
    perm = torch.rand(b, t, generator=generator).argsort(1)
    return masked[torch.arange(b)[:, None], perm]


def _eval_generator(generator, train: bool):
    """Evaluation masks are reproducible: without a generator they use seed 0."""
    if generator is None and not train:
        return torch.Generator().manual_seed(0)
    return generator


@dataclass(frozen=True)
class MaskingStrategy:
    """Base of all strategies. ``ratio`` is the fraction of tokens masked."""

    name: ClassVar[str] = ""
    ratio: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"{self.name}: mask ratio must be in [0, 1), got {self.ratio}")

    def __call__(self, batch_size: int, grid: Grid, train: bool = True,
                 generator: torch.Generator | None = None) -> Mask:
        grid = tuple(int(g) for g in grid)
        if self.ratio == 0:
            return Mask.full(batch_size, grid)
        generator = _eval_generator(generator, train)
        masked = self.masked(batch_size, grid, train, generator)
        return Mask.from_bool(masked, grid)

    def masked(self, batch_size: int, grid: Grid, train: bool, generator) -> Tensor:
        """(B, T', H', W') boolean, True = masked. Subclasses implement this."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoMasking(MaskingStrategy):
    """Every token visible: the standard full-token model."""

    name: ClassVar[str] = "none"
    ratio: float = 0.0

    def __post_init__(self):
        if self.ratio != 0:
            raise ValueError(f"none: mask ratio must be 0, got {self.ratio}")


@dataclass(frozen=True)
class RandomMasking(MaskingStrategy):
    """Random standard masking: tokens drawn uniformly over the whole clip."""

    name: ClassVar[str] = "random"

    def masked(self, batch_size, grid, train, generator):
        n = math.prod(grid)
        return _rand_subset((batch_size,), n, _count(self.ratio, n), generator).view(
            batch_size, *grid)


@dataclass(frozen=True)
class TubeMasking(MaskingStrategy):
    """Tube masking (VideoMAE): one random spatial mask repeated over all frames."""

    name: ClassVar[str] = "tube"

    def masked(self, batch_size, grid, train, generator):
        t, h, w = grid
        frame = _rand_subset((batch_size,), h * w, _count(self.ratio, h * w), generator)
        return frame.view(batch_size, 1, h, w).expand(-1, t, -1, -1)


@dataclass(frozen=True)
class FrameMasking(MaskingStrategy):
    """Frame masking: whole token frames (tubelets in time) dropped at random."""

    name: ClassVar[str] = "frame"

    def masked(self, batch_size, grid, train, generator):
        t, h, w = grid
        frames = _rand_subset((batch_size,), t, _count(self.ratio, t), generator)
        return frames.view(batch_size, t, 1, 1).expand(-1, -1, h, w)


@dataclass(frozen=True)
class BlockMasking(MaskingStrategy):
    """Block standard masking: each frame loses one random rectangular block."""

    name: ClassVar[str] = "block"

    def masked(self, batch_size, grid, train, generator):
        t, h, w = grid
        k = _count(self.ratio, h * w)
        blocks = [_block(h, w, k, generator) for _ in range(batch_size * t)]
        return torch.stack(blocks).view(batch_size, t, h, w)


@dataclass(frozen=True)
class CellRunningMasking(MaskingStrategy):
    """Cell running masking, MAR's strategy (paper §III-B, Fig. 3(d-e), Fig. 4).

    The frame is tiled by cells of ``cell`` = (r, q) tokens, positions numbered
    row-major. State A masks the first k = ratio * r * q positions (``initial="first"``,
    the official order) or k positions spread evenly (``initial="uniform"``, for large
    cells); each next frame moves the masked slots one position forward, cyclically.

    Training: each clip (``spatial="repeated"``) or each cell (``"random"``) draws a
    random start state; ``temporal="shuffled"`` then permutes the frame order
    (Table III(a); the paper's best is repeated + shuffled). Evaluation: every cell
    starts at ``start_state`` (0 = A, 1 = B, ...; Table III(b)), frames in order.
    """

    name: ClassVar[str] = "cell_running"
    cell: tuple[int, int] = (2, 2)
    spatial: Literal["repeated", "random"] = "repeated"
    temporal: Literal["shuffled", "fixed"] = "shuffled"
    start_state: int = 0
    initial: Literal["first", "uniform"] = "first"

    def __post_init__(self):
        super().__post_init__()
        if self.spatial not in ("repeated", "random"):
            raise ValueError(f"{self.name}: spatial must be 'repeated' or 'random', got "
                             f"{self.spatial!r}")
        if self.temporal not in ("shuffled", "fixed"):
            raise ValueError(f"{self.name}: temporal must be 'shuffled' or 'fixed', got "
                             f"{self.temporal!r}")
        if self.initial not in ("first", "uniform"):
            raise ValueError(f"{self.name}: initial must be 'first' or 'uniform', got "
                             f"{self.initial!r}")

    def cell_shape(self, grid: Grid) -> tuple[int, int]:
        return tuple(self.cell)

    def masked(self, batch_size, grid, train, generator):
        t, h, w = grid
        r, q = self.cell_shape(grid)
        if r <= 0 or q <= 0 or h % r or w % q:
            raise ValueError(f"{self.name}: cell {r}x{q} does not tile the {h}x{w} token grid")
        p = r * q
        k = self.ratio * p
        if abs(k - round(k)) > 1e-6:
            lo, hi = math.floor(k) / p, math.ceil(k) / p
            raise ValueError(f"{self.name}: a {r}x{q} cell masks whole positions, so the "
                             f"ratio must be a multiple of 1/{p}; got {self.ratio} "
                             f"(nearest: {lo:.4g} or {hi:.4g})")
        k = round(k)
        n_cells = (h // r) * (w // q)
        base = torch.zeros(p, dtype=torch.bool)
        if self.initial == "first":
            base[:k] = True
        else:
            base[[i * p // k for i in range(k)]] = True
        base = base.expand(batch_size, n_cells, p)
        if train:
            shape = (batch_size, 1) if self.spatial == "repeated" else (batch_size, n_cells)
            start = torch.randint(0, p, shape, generator=generator).expand(-1, n_cells)
        else:
            start = torch.full((batch_size, n_cells), self.start_state % p)
        masked = _run(base, t, start)
        masked = rearrange(masked, "b t (hc wc) (r q) -> b t (hc r) (wc q)",
                           hc=h // r, r=r, q=q)
        if train and self.temporal == "shuffled":
            masked = _shuffle_time(masked, generator)
        return masked


@dataclass(frozen=True)
class UniformRunningMasking(CellRunningMasking):
    """Uniform running masking (Fig. 3(c)): one frame-sized cell, masks spread evenly.

    Training draws a random start state; frames stay in running order.
    """

    name: ClassVar[str] = "uniform_running"
    cell: tuple[int, int] | None = None
    temporal: Literal["shuffled", "fixed"] = "fixed"
    initial: Literal["first", "uniform"] = "uniform"

    def cell_shape(self, grid: Grid) -> tuple[int, int]:
        return (grid[1], grid[2])


@dataclass(frozen=True)
class RandomRunningMasking(MaskingStrategy):
    """Random running masking (Fig. 3(a)): a random first-frame mask that runs over time."""

    name: ClassVar[str] = "random_running"

    def first_frame(self, batch_size, h, w, generator) -> Tensor:
        return _rand_subset((batch_size,), h * w, _count(self.ratio, h * w), generator)

    def masked(self, batch_size, grid, train, generator):
        t, h, w = grid
        base = self.first_frame(batch_size, h, w, generator).view(batch_size, 1, h * w)
        masked = _run(base, t, torch.zeros(batch_size, 1, dtype=torch.long))
        return masked.view(batch_size, t, h, w)


@dataclass(frozen=True)
class BlockRunningMasking(RandomRunningMasking):
    """Block running masking (Fig. 3(b)): a random first-frame block that runs over time."""

    name: ClassVar[str] = "block_running"

    def first_frame(self, batch_size, h, w, generator) -> Tensor:
        k = _count(self.ratio, h * w)
        return torch.stack([_block(h, w, k, generator) for _ in range(batch_size)]).view(
            batch_size, h * w)


STRATEGIES: dict[str, type[MaskingStrategy]] = {
    cls.name: cls for cls in (
        NoMasking, RandomMasking, TubeMasking, FrameMasking, BlockMasking,
        CellRunningMasking, UniformRunningMasking, RandomRunningMasking, BlockRunningMasking,
    )
}


def make_masking(name: str, ratio: float | None = None, **options) -> MaskingStrategy:
    """Build a strategy by name, e.g. ``make_masking("cell_running", ratio=0.5, cell=(2, 2))``.

    Names: none, random, tube, frame, block, block_running, random_running,
    uniform_running, cell_running. ``options`` are the strategy's dataclass fields.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {name!r}; known: {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    known = {f.name for f in fields(cls)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(known))}")
    if "cell" in options and options["cell"] is not None:
        options["cell"] = tuple(int(c) for c in options["cell"])
    if ratio is not None:
        options["ratio"] = float(ratio)
    return cls(**options)
