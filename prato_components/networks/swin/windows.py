"""Window planning for pruned Swin blocks: where every grid cell lands in a block's window partition
(:func:`window_layout`, MONAI's own pad, roll and ``window_partition``) and which windows a set of live tokens
needs (:func:`plan_windows`). See :mod:`prato_components.networks.swin_unetr` for window skipping and export."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size, window_partition

from prato_components.tokens import tracing

__all__ = ["LayerWindows", "WindowLayout", "WindowPlan", "block_layout", "plan_windows", "window_layout"]


@dataclass
class WindowLayout:
    """Where every cell of an (unpadded) grid lands in one block's window partition (MONAI's pad, roll, partition).

    Attributes:
        window_size, shift_size: the effective sizes (MONAI's ``get_window_size``: a grid axis not larger than the
            window is one window, unshifted).
        window_of: ``[N]`` window (within an image) of every grid cell.
        slot_of: ``[N]`` position of every grid cell inside its window.
        pad_slots: ``[num_windows, window_volume]`` bool, slots holding MONAI's zero padding.
        attn_mask: ``[num_windows, n, n]`` MONAI's shifted-window mask (``compute_mask``), ``None`` when unshifted.
    """

    window_size: tuple[int, ...]
    shift_size: tuple[int, ...]
    window_of: torch.Tensor
    slot_of: torch.Tensor
    pad_slots: torch.Tensor
    attn_mask: torch.Tensor | None

    @property
    def num_windows(self) -> int:
        return self.pad_slots.shape[0]

    @property
    def window_volume(self) -> int:
        return self.pad_slots.shape[1]


def window_layout(
    grid_shape: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int], device: torch.device | None = None
) -> WindowLayout:
    """The :class:`WindowLayout` of a block with nominal ``window_size``/``shift_size`` on ``grid_shape``.

    Built by running MONAI's own padding, roll and ``window_partition`` on a grid of cell indices, so the window and
    slot order is exactly MONAI's.
    """
    grid_shape = tuple(int(g) for g in grid_shape)
    window, shift = get_window_size(grid_shape, tuple(window_size), tuple(shift_size))
    padded = tuple(math.ceil(g / w) * w for g, w in zip(grid_shape, window))
    num_cells = math.prod(grid_shape)
    cells = torch.full((1, *padded, 1), -1, dtype=torch.long, device=device)
    cells[(slice(None), *(slice(0, g) for g in grid_shape))] = torch.arange(num_cells, device=device).view(
        1, *grid_shape, 1
    )
    if any(s > 0 for s in shift):
        cells = torch.roll(cells, shifts=tuple(-s for s in shift), dims=tuple(range(1, len(grid_shape) + 1)))
    table = window_partition(cells, window).squeeze(-1)  # [num_windows, n]
    filled = table >= 0
    windows = torch.arange(table.shape[0], device=device)[:, None].expand_as(table)
    slots = torch.arange(table.shape[1], device=device)[None].expand_as(table)
    window_of = torch.empty(num_cells, dtype=torch.long, device=device)
    slot_of = torch.empty(num_cells, dtype=torch.long, device=device)
    window_of[table[filled]] = windows[filled]
    slot_of[table[filled]] = slots[filled]
    attn_mask = compute_mask(list(padded), window, shift, device) if any(s > 0 for s in shift) else None
    return WindowLayout(tuple(window), tuple(shift), window_of, slot_of, ~filled, attn_mask)


def block_layout(block: SwinTransformerBlock, grid_shape: Sequence[int], device=None) -> WindowLayout:
    """The :class:`WindowLayout` of one MONAI ``SwinTransformerBlock`` (its own window and shift) on a grid."""
    return window_layout(grid_shape, block.window_size, block.shift_size, device)


@dataclass
class WindowPlan:
    """The windows one block attends for a set of live tokens (shared by all blocks with the same layout).

    Attributes:
        position: ``[T]`` where every live token sits in the kept windows flattened to ``[W * n]``
            (``kept window * n + slot``).
        windows: ``[W]`` kept windows as ``image * num_windows + window``.
        mask: additive ``[W, 1, n, n]`` (or ``[W, 1, 1, n]``) mask: the shifted-window mask and ``-inf`` on pruned
            keys; ``None`` when every window is whole and unshifted.
        num_windows: windows of the full partition over the batch (``B * windows per image``).
        window_volume: tokens per window ``n``.
    """

    position: torch.Tensor
    windows: torch.Tensor
    mask: torch.Tensor | None
    num_windows: int
    window_volume: int

    @property
    def num_kept(self) -> int:
        return self.windows.shape[0]  # a plain int in eager, a symbolic size under torch.export


def plan_windows(
    flat_index: torch.Tensor, grid_shape: Sequence[int], batch_size: int, layout: WindowLayout
) -> WindowPlan:
    """Kept windows (those with at least one live token) of the whole batch, flattened into one batch of windows.

    Args:
        flat_index: ``[T]`` live tokens as ``image * N + cell`` (``N = prod(grid_shape)``).
        grid_shape: the token grid.
        batch_size: images in the batch.
        layout: the block's :class:`WindowLayout` on ``grid_shape``.
    """
    num_cells = math.prod(grid_shape)
    per_image, n = layout.num_windows, layout.window_volume
    image = torch.div(flat_index, num_cells, rounding_mode="floor")
    cell = flat_index - image * num_cells
    window = image * per_image + layout.window_of[cell]
    slot = layout.slot_of[cell]
    occupied = torch.zeros(batch_size * per_image, dtype=torch.bool, device=flat_index.device)
    occupied[window] = True
    compiling = tracing() and not torch.compiler.is_exporting()
    if compiling:  # torch.compile: every window (a count from shapes); an empty one attends to all its slots, unread
        windows, row = torch.arange(occupied.shape[0], device=flat_index.device), window
    else:
        windows = occupied.nonzero().squeeze(1)
        row = (occupied.cumsum(0) - 1)[window]
    position = row * n + slot
    live = torch.zeros(windows.numel() * n, dtype=torch.bool, device=flat_index.device)
    live[position] = True
    live = live.view(-1, n)
    local = windows % per_image
    keys = live | layout.pad_slots[local]
    if compiling:
        keys = keys | ~occupied.unsqueeze(1)
    mask = None
    if layout.attn_mask is not None:
        mask = layout.attn_mask[local].unsqueeze(1)  # [W, 1, n, n]
    if tracing() or not bool(keys.all()):
        key_bias = torch.zeros(keys.shape, device=flat_index.device).masked_fill(~keys, float("-inf"))[:, None, None, :]
        mask = key_bias if mask is None else mask + key_bias
    return WindowPlan(position, windows, mask, batch_size * per_image, n)


class LayerWindows:
    """The :class:`WindowPlan` of each window partition (shifted or not) of one Swin layer's live tokens, planned once
    and shared by the layer's blocks.

    Args:
        flat_index: ``[T]`` live tokens as ``image * N + cell``.
        grid_shape: the layer's token grid.
        batch_size: images in the batch.
        layouts: a cache of :class:`WindowLayout` per grid, window, shift and device, kept across forward passes
            (fixed for a given input size).
    """

    def __init__(self, flat_index: torch.Tensor, grid_shape: Sequence[int], batch_size: int, layouts: dict) -> None:
        self.flat_index, self.grid_shape, self.batch_size = flat_index, tuple(grid_shape), batch_size
        self.layouts = layouts
        self.plans: dict = {}

    def plan(self, block: SwinTransformerBlock) -> WindowPlan:
        """The plan of ``block``'s partition."""
        device = self.flat_index.device
        key = (self.grid_shape, tuple(block.window_size), tuple(block.shift_size), str(device))
        if key not in self.layouts:
            self.layouts[key] = block_layout(block, self.grid_shape, device)
        if key not in self.plans:
            self.plans[key] = plan_windows(self.flat_index, self.grid_shape, self.batch_size, self.layouts[key])
        return self.plans[key]
