"""Attention maps of hierarchical encoders, for pruners that score tokens by attention (docs/design.md §4).

A plain ViT block hands such a pruner one dense map ``[B, heads, n, n]`` over its live tokens. The hierarchical
backbones attend differently, and hand over one of these instead (in ``StageInput.attentions``):

- :class:`WindowAttention` (Swin UNETR): every live token attends only within its window. The map of a block is
  ``[W, heads, n, n]`` over the slots of the ``W`` attended windows; read as one ``[N, N]`` map per image it is
  block diagonal, and a per-token quantity (the attention a token receives, its in-degree) is the same whether it
  is computed on that block-diagonal map or window by window.
- :class:`ReducedAttention` (SegFormer's spatial-reduction attention): the live tokens attend to ``M`` keys computed
  from a reduced grid, each key pooling the ``sr x sr`` tokens of its cell. Read as a token-to-token map, a key's
  attention is spread evenly over the tokens it pools: ``A_tok[i, j] = A[i, key(j)] / pool(key(j))``.

Both carry the grid they were computed on, which in a hierarchy is finer than the pruner's (the blocks before a
boundary run on the previous stage's grid): :func:`coarsen` carries per-cell scores to a coarser grid by summing
or averaging the cells each coarse cell covers (:func:`coarse_cells`, the stride-2 nesting ``c -> c // 2`` of Swin's
patch merging and of MiT's stride-2 patch embeddings). Pure tensor code: imports nothing from this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "BlockOutput",
    "ReducedAttention",
    "WindowAttention",
    "coarse_cells",
    "coarsen",
    "load_grid_scores",
    "reduced_key_cells",
    "store_grid_scores",
]


class BlockOutput(NamedTuple):
    """What a hierarchical block returns when asked for more than its tokens: the tokens, its attention probabilities
    (``None`` unless asked) and the block output of the extra representative tokens (``None`` without them)."""

    tokens: torch.Tensor
    attention: torch.Tensor | None = None
    representative: torch.Tensor | None = None


def coarse_cells(grid_shape: Sequence[int], target_shape: Sequence[int]) -> torch.Tensor:
    """``[N]`` long: for every cell of ``grid_shape`` (row-major), the cell of ``target_shape`` that covers it.

    Each halving maps a cell ``c`` to ``c // 2`` on a grid of ``ceil(size / 2)`` cells (Swin's patch merging pads odd
    sizes, MiT's 3x3 stride-2 embedding with padding 1 gives ``ceil(size / 2)``); ``target_shape`` must be reached
    by halving ``grid_shape`` zero or more times.
    """
    shape, target = [int(s) for s in grid_shape], [int(s) for s in target_shape]
    axes = [torch.arange(s) for s in shape]
    while shape != target:
        if any(s <= t for s, t in zip(shape, target)) or len(shape) != len(target):
            raise ValueError(f"grid {tuple(grid_shape)} does not halve to {tuple(target_shape)}")
        axes = [torch.div(a, 2, rounding_mode="floor") for a in axes]
        shape = [math.ceil(s / 2) for s in shape]
    index = torch.zeros(1, dtype=torch.long)
    for axis, size in zip(axes, target):
        index = (index.unsqueeze(-1) * size + axis).flatten()
    return index


def coarsen(values: torch.Tensor, grid_shape: Sequence[int], target_shape: Sequence[int], reduce: str) -> torch.Tensor:
    """Per-cell ``values`` ``[B, N]`` on ``grid_shape`` carried to ``target_shape`` ``[B, N']``: each coarse cell takes
    the ``"sum"`` or the ``"mean"`` of the cells it covers (:func:`coarse_cells`); the same grid returns ``values``."""
    if tuple(grid_shape) == tuple(target_shape):
        return values
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    cells = coarse_cells(grid_shape, target_shape).to(values.device)
    num_target = math.prod(target_shape)
    total = values.new_zeros(values.shape[0], num_target).index_add_(1, cells, values)
    if reduce == "sum":
        return total
    counts = torch.zeros(num_target, dtype=values.dtype, device=values.device)
    counts = counts.index_add_(0, cells, torch.ones_like(cells, dtype=values.dtype))
    return total / counts


def load_grid_scores(memory: dict, key: str) -> tuple[tuple[int, ...] | None, torch.Tensor | None]:
    """The per-cell scores a pruner keeps in a forward pass's ``memory`` under ``key`` (``[B, N + 1]``, the last
    column collecting padding rows) and the grid they are on (``None, None`` before the first)."""
    return memory.get(key + ".grid"), memory.get(key)


def store_grid_scores(memory: dict, key: str, grid_shape: Sequence[int], scores: torch.Tensor) -> None:
    """Keep ``scores`` ``[B, N + 1]`` on ``grid_shape`` in ``memory`` under ``key`` (see :func:`load_grid_scores`)."""
    memory[key], memory[key + ".grid"] = scores, tuple(int(s) for s in grid_shape)


def pad_column(values: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` -> ``[B, N + 1]`` with a zero last column (where padding rows of a token list point)."""
    return F.pad(values, (0, 1))


@dataclass
class WindowAttention:
    """The attention of one window-attention block (Swin) over the live tokens of a batch.

    Attributes:
        probs: ``[W, heads, n, n]`` attention probabilities in the ``W`` attended windows (queries x keys over the
            window's slots; keys that are not live tokens, i.e. pruned or MONAI padding slots, may take part as
            keys: pruned ones with probability 0).
        cells: ``[W, n]`` long, the grid position ``image * N + cell`` of the live token in each slot, ``B * N`` in
            slots without a live token (pruned, empty or padding).
        grid_shape: the grid the block ran on.
        batch_size: images ``B``.
    """

    probs: torch.Tensor
    cells: torch.Tensor
    grid_shape: tuple[int, ...]
    batch_size: int

    @property
    def num_cells(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def live(self) -> torch.Tensor:
        """``[W, n]`` bool: slots holding a live token (the queries whose output the block keeps)."""
        return self.cells < self.batch_size * self.num_cells

    def to_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Per-slot ``values`` ``[W, n]`` of the live tokens on the grid ``[B, N]`` (0 where no token is live)."""
        total = self.batch_size * self.num_cells
        flat = values.new_zeros(total + 1).index_put((self.cells.flatten(),), values.flatten())
        return flat[:total].view(self.batch_size, self.num_cells)

    def live_grid(self) -> torch.Tensor:
        """``[B, N]`` bool: the grid positions of the live tokens."""
        return self.to_grid(self.live.to(torch.float32)) > 0

    def image_live_counts(self) -> torch.Tensor:
        """``[W]`` float: the live tokens of each window's image (the queries of the image's whole attention)."""
        per_image = self.live_grid().sum(1, dtype=torch.float32)  # [B]
        first = self.cells.min(dim=1).values.clamp(max=self.batch_size * self.num_cells - 1)  # a live slot per window
        return per_image[torch.div(first, self.num_cells, rounding_mode="floor")]


def reduced_key_cells(grid_shape: Sequence[int], ratio: int) -> torch.Tensor:
    """``[N]`` long: the key of a spatial-reduction attention (a ``ratio``-kernel, ``ratio``-stride convolution
    without padding, ``floor(size / ratio)`` keys per axis) each grid cell is pooled into; cells past the last whole
    ``ratio`` block (a size that is not a multiple of ``ratio``) belong to no key and are given the last key of
    their row or column."""
    index = torch.zeros(1, dtype=torch.long)
    for size in grid_shape:
        keys = max(1, int(size) // ratio)
        axis = torch.div(torch.arange(int(size)), ratio, rounding_mode="floor").clamp(max=keys - 1)
        index = (index.unsqueeze(-1) * keys + axis).flatten()
    return index


@dataclass
class ReducedAttention:
    """The attention of one spatial-reduction block (SegFormer's MiT) from its live tokens to its reduced keys.

    Attributes:
        probs: ``[B, heads, n, M]`` attention probabilities of the ``n`` query rows over the ``M`` reduced keys.
        query_cells: ``[B, n]`` long, grid position of every query row (``N`` on padding rows).
        query_valid: ``[B, n]`` bool, the rows that are live tokens (``None``: all).
        key_of: ``[N]`` long, the key every grid cell is pooled into (:func:`reduced_key_cells`).
        grid_shape: the token grid of the block.
    """

    probs: torch.Tensor
    query_cells: torch.Tensor
    query_valid: torch.Tensor | None
    key_of: torch.Tensor
    grid_shape: tuple[int, ...]

    def pool_sizes(self) -> torch.Tensor:
        """``[M]`` float: the grid cells pooled into each key."""
        ones = torch.ones_like(self.key_of, dtype=self.probs.dtype)
        counts = torch.zeros(self.probs.shape[-1], dtype=self.probs.dtype, device=ones.device)
        return counts.index_add_(0, self.key_of, ones)

    def keys_to_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Per-key ``values`` ``[B, M]`` on the grid ``[B, N]``: every cell gets its key's value divided by the number
        of cells the key pools (the key's share, spread evenly over its cells)."""
        return (values / self.pool_sizes())[:, self.key_of]

    def keys_to_queries(self, values: torch.Tensor) -> torch.Tensor:
        """Per-key ``values`` ``[B, M]`` at the query rows ``[B, n]`` (:meth:`keys_to_grid` read at their cells)."""
        grid = self.keys_to_grid(values)
        return grid.gather(1, self.query_cells.clamp(max=grid.shape[1] - 1))

    def live_grid(self) -> torch.Tensor:
        """``[B, N]`` bool: the grid positions of the live query tokens."""
        num = math.prod(self.grid_shape)
        live = torch.ones_like(self.query_cells, dtype=torch.bool) if self.query_valid is None else self.query_valid
        grid = torch.zeros(live.shape[0], num + 1, dtype=torch.bool, device=live.device)
        return grid.scatter(1, self.query_cells, live)[:, :num]
