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

Cell running counts and first-frame patterns (see docs/masking.md):

- A cell of p = r * q positions masks k = the whole count nearest ``ratio * p`` (a tie,
  x.5, goes up), kept in 1..p-1, in every cell of every frame; the real masked fraction
  is k / p (:meth:`MaskingStrategy.effective_ratio`). 2 x 2 at 0.6 masks 2 of 4 (50 %),
  7 x 7 at 0.5 masks 25 of 49 (51.0 %).
- The first frame ("state A") masks the first k positions (``initial="first"``) or k
  positions spread with a fractional stride p / k (``"uniform"``). By default cells of at
  most 4 positions use "first" (2 x 2 at 50 %: [1, 1, 0, 0], the paper's Fig. 3(e)) and
  larger cells "uniform", so that they do not degenerate into a block (paper §IV, Table IV).
- The cell must tile the frame; otherwise a ValueError names the cell and the grid.

The official code (MAR ``models/base/agents.py``) differs on ratios the cell does not
divide: ``CellRunningMaskAgent`` (2 x 2, the one every official config uses) floors the
per-cell count (0.6 -> 2 of 4, 0.9 -> 3 of 4); ``CellRunningMaskAgentMultiCell`` (any
cell, used by no config) takes the ceiling, spreads the masked positions through the cell
with a stride and asserts the count. The nearest count agrees with the ceiling where
``ratio * p`` ends in .5 or more (Table IV's 7 x 7 at 50 %) and with the floor below that
(2 x 2 at 0.6 or 0.9); it differs from the floor at, e.g., 2 x 2 at 0.7 (3 of 4 here,
2 of 4 there). Every official config uses 2 x 2 at 0.5, where all three agree.
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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Mask:
        return Mask(self.ids_keep.to(device, non_blocking=non_blocking),
                    self.ids_mask.to(device, non_blocking=non_blocking), self.grid)

    def pin_memory(self) -> Mask:
        """In page-locked memory, for a ``non_blocking`` copy to a GPU."""
        return Mask(self.ids_keep.pin_memory(), self.ids_mask.pin_memory(), self.grid)

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


def cell_count(ratio: float, p: int) -> int:
    """Masked positions per running cell of ``p`` positions for ``ratio``.

    The whole count nearest ``ratio * p``, a tie (x.5) going up as the official multi-cell
    agent's ceiling does (7 x 7 at 0.5: 24.5 -> 25), then kept in 1..p-1 so that a cell
    always masks something and always shows something (2 x 2 at 0.9: 3.6 -> 3, the
    official 2 x 2 agent's floor). ``ratio`` 0 gives 0 (nothing masked).
    """
    if p < 2:
        raise ValueError(f"a running cell needs at least 2 positions, got {p}")
    if ratio == 0:
        return 0
    k = math.floor(ratio * p + 0.5 + 1e-9)  # 1e-9: 24/49 * 49 may land just under 24
    return min(max(k, 1), p - 1)


def first_pattern(p: int, k: int) -> Tensor:
    """(p,) boolean, the first k positions masked: state A of the paper's 2 x 2 cell."""
    base = torch.zeros(p, dtype=torch.bool)
    base[:k] = True
    return base


def spread_pattern(p: int, k: int) -> Tensor:
    """(p,) boolean, k positions masked at floor(i * p / k), i = 0..k-1 (stride p / k).

    This is a balanced pattern: every cyclic run of L consecutive positions holds
    floor(L k / p) or ceil(L k / p) masked ones. Running moves the pattern one position
    per frame, so over any T consecutive frames each position is masked floor or ceil of
    T k / p times, and every frame masks exactly k. In a 7-wide cell at 50 % the row-major
    stride of about 2 gives a near checkerboard; in a 14-wide frame, columns.
    """
    base = torch.zeros(p, dtype=torch.bool)
    base[[i * p // k for i in range(k)]] = True
    return base


def _tiling_error(name: str, cell: tuple[int, int], grid: Grid) -> ValueError:
    """The error for a cell that does not tile the frame, with the sides that would."""
    t, h, w = grid
    rows = [d for d in range(1, h + 1) if h % d == 0]
    cols = [d for d in range(1, w + 1) if w % d == 0]
    return ValueError(f"{name}: cell {cell[0]}x{cell[1]} does not tile the {h}x{w} token "
                      f"frame of grid {t}x{h}x{w} (partial cells are not supported); cell "
                      f"rows must divide {h} ({', '.join(map(str, rows))}) and columns "
                      f"{w} ({', '.join(map(str, cols))})")


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

    def effective_ratio(self, grid: Grid) -> float:
        """The fraction of ``grid``'s tokens really masked: ``ratio`` after rounding to
        whole tokens (the same for training and evaluation masks)."""
        mask = self(1, grid, train=False)
        return mask.num_masked / mask.num_tokens


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
    """Cell running masking, MAR's strategy (paper §III-B, Fig. 3(d-e), Fig. 4, Table IV).

    The frame is tiled by cells of ``cell`` = (r, q) tokens, p = r * q positions numbered
    row-major; a cell that does not tile the frame is a ValueError. Every cell of every
    frame masks k = :func:`cell_count` (ratio, p) positions: the nearest whole count, ties
    up, in 1..p-1 (so 7 x 7 at 0.5 masks 25 of 49; :meth:`effective_ratio` gives k / p).
    State A masks the first k positions (``initial="first"``) or k positions spread with
    stride p / k (``"uniform"``); the default ``None`` takes "first" for cells of at most
    4 positions (2 x 2 at 50 %: [1, 1, 0, 0], the paper's and the official pattern) and
    "uniform" for larger ones, which the paper says must not start as a block (Table IV).
    Each next frame moves the masked slots one position forward, cyclically.

    Training: each clip (``spatial="repeated"``) or each cell (``"random"``) draws a
    random start state in 0..p-1; ``temporal="shuffled"`` then permutes the frame order
    (Table III(a); the paper's best is repeated + shuffled). Evaluation: every cell
    starts at ``start_state`` (0 = A, 1 = B, ...; Table III(b)), frames in order.

    The official 2 x 2 agent floors k (0.6 -> 2 of 4); its multi-cell agent, used by no
    config, takes the ceiling and spreads with a stride; see the module docstring.
    """

    name: ClassVar[str] = "cell_running"
    cell: tuple[int, int] = (2, 2)
    spatial: Literal["repeated", "random"] = "repeated"
    temporal: Literal["shuffled", "fixed"] = "shuffled"
    start_state: int = 0
    initial: Literal["first", "uniform"] | None = None

    # cells up to this many positions start with "first" by default (2 x 2, 1 x 2, ...)
    SMALL_CELL: ClassVar[int] = 4

    def __post_init__(self):
        super().__post_init__()
        if self.spatial not in ("repeated", "random"):
            raise ValueError(f"{self.name}: spatial must be 'repeated' or 'random', got "
                             f"{self.spatial!r}")
        if self.temporal not in ("shuffled", "fixed"):
            raise ValueError(f"{self.name}: temporal must be 'shuffled' or 'fixed', got "
                             f"{self.temporal!r}")
        if self.initial not in ("first", "uniform", None):
            raise ValueError(f"{self.name}: initial must be 'first', 'uniform' or None "
                             f"(by cell size), got {self.initial!r}")
        if self.cell is not None:
            r, q = self.cell
            if r < 1 or q < 1 or r * q < 2:
                raise ValueError(f"{self.name}: a running cell needs at least 2 positions, "
                                 f"got cell {r}x{q}")

    def cell_shape(self, grid: Grid) -> tuple[int, int]:
        """(r, q) of the running cell on ``grid``; ValueError if it does not tile it."""
        r, q = tuple(self.cell)
        if grid[1] % r or grid[2] % q:
            raise _tiling_error(self.name, (r, q), grid)
        return r, q

    def initial_for(self, p: int) -> Literal["first", "uniform"]:
        """The first-frame pattern of a cell of ``p`` positions (resolves ``None``)."""
        if self.initial is not None:
            return self.initial
        return "first" if p <= self.SMALL_CELL else "uniform"

    def masked_per_cell(self, grid: Grid) -> int:
        """k: masked positions in every cell of every frame on ``grid``."""
        r, q = self.cell_shape(grid)
        return cell_count(self.ratio, r * q)

    def effective_ratio(self, grid: Grid) -> float:
        r, q = self.cell_shape(grid)
        return self.masked_per_cell(grid) / (r * q)

    def masked(self, batch_size, grid, train, generator):
        t, h, w = grid
        r, q = self.cell_shape(grid)
        p, k = r * q, self.masked_per_cell(grid)
        n_cells = (h // r) * (w // q)
        pattern = first_pattern if self.initial_for(p) == "first" else spread_pattern
        base = pattern(p, k).expand(batch_size, n_cells, p)          # (B, C, P)
        if train:
            shape = (batch_size, 1) if self.spatial == "repeated" else (batch_size, n_cells)
            start = torch.randint(0, p, shape, generator=generator).expand(-1, n_cells)
        else:
            start = torch.full((batch_size, n_cells), self.start_state % p)
        masked = _run(base, t, start)                                   # (B, T', C, P)
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
    initial: Literal["first", "uniform"] | None = "uniform"

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
