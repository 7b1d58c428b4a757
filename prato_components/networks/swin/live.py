"""The live tokens of a Swin grid: a flat view of a :class:`~prato_components.tokens.TokenState` for the Swin blocks,
and how the live set moves to the next grid through patch merging (docs/design.md §5, §6).

The Swin blocks (:mod:`.blocks`) take the live tokens of the whole batch as one flat list ``[T, C]`` with their
positions ``image * N + cell`` (ascending): norms, linears and window attention then need no padding, whatever
the count per image. :func:`live_tokens` reads that list out of the executor's state and :func:`set_live_tokens`
writes the blocks' output back; the state does everything else (stage input, selection, reports, restoring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from prato_components.tokens.attention import coarse_cells
from prato_components.tokens.executor import TokenState

__all__ = ["live_tokens", "parent_stages", "parents", "set_live_tokens"]


def live_tokens(state: TokenState) -> tuple[torch.Tensor, torch.Tensor]:
    """The live tokens of ``state`` flat over the batch: ``[T, C]`` and their positions ``[T]`` as ``image * N +
    cell``, ascending (every token while nothing is pruned; in the full-length modes the alive ones)."""
    batch, rows, channels = state.tokens.shape
    flat = state.tokens.reshape(batch * rows, channels)
    if state.alive is not None:
        index = state.alive.reshape(-1).nonzero().squeeze(1)
        return flat.index_select(0, index), index
    if state.token_index is None:
        return flat, torch.arange(batch * rows, device=flat.device)
    offsets = torch.arange(batch, device=flat.device).unsqueeze(1) * state.grid_tokens
    index = state.token_index + offsets
    if state.valid is None:
        return flat, index.reshape(-1)
    return state.tokens[state.valid], index[state.valid]


def set_live_tokens(state: TokenState, tokens: torch.Tensor, index: torch.Tensor) -> None:
    """Write the live tokens ``[T, C]`` (as :func:`live_tokens` gave them, at ``index``) back into ``state``."""
    batch, rows, channels = state.tokens.shape
    if state.alive is not None:
        flat = state.tokens.reshape(batch * rows, channels)
        state.tokens = flat.index_copy(0, index, tokens).view(batch, rows, channels)
    elif state.valid is None:
        state.tokens = tokens.view(batch, rows, channels)
    else:
        state.tokens = state.tokens.masked_scatter(state.valid.unsqueeze(-1), tokens)


def _unravel(cell: torch.Tensor, grid_shape: Sequence[int]) -> list[torch.Tensor]:
    coords = []
    for size in reversed(grid_shape):
        coords.append(cell % size)
        cell = torch.div(cell, size, rounding_mode="floor")
    return coords[::-1]


def parents(index: torch.Tensor, grid_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    """``[B * N']`` bool on the next grid (each axis halved, rounded up): the patch-merging parents of the live cells
    ``index`` (``image * N + cell``); a parent is alive if any of its ``2^D`` children is."""
    num_cells = math.prod(grid_shape)
    image = torch.div(index, num_cells, rounding_mode="floor")
    coords = _unravel(index - image * num_cells, grid_shape)
    next_shape = [math.ceil(g / 2) for g in grid_shape]
    parent = torch.zeros_like(index)
    for c, size in zip(coords, next_shape):
        parent = parent * size + torch.div(c, 2, rounding_mode="floor")
    alive = torch.zeros(batch_size * math.prod(next_shape), dtype=torch.bool, device=index.device)
    return alive.index_fill(0, image * math.prod(next_shape) + parent, True)


def parent_stages(stage_of: torch.Tensor, grid_shape: Sequence[int], alive: torch.Tensor) -> torch.Tensor:
    """``[B, N']``: the stage at which each cell of the next grid was pruned, from ``stage_of`` ``[B, N]`` on this
    grid: a parent dies with its last child (the latest stage among its children); alive parents (``alive``
    ``[B, N']``) hold 0."""
    next_shape = [math.ceil(g / 2) for g in grid_shape]
    batch = stage_of.shape[0]
    parent = coarse_cells(grid_shape, next_shape).to(stage_of.device).expand(batch, -1)
    stages = stage_of.new_zeros(batch, math.prod(next_shape)).scatter_reduce(1, parent, stage_of, "amax")
    return stages.masked_fill(alive, 0)
