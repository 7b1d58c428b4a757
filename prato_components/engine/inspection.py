"""Looking inside a pruned network: which grid cells each pruned stage kept (docs/design.md §13).

:func:`record_retention` hooks the network's pruners for the duration of a ``with`` block and collects, for every
forward pass, the map of tokens alive after each pruned stage on that stage's full grid. Used by the experiment
report (the paper's Fig. 7 retention maps) and by the per-class retention analysis of small structures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from prato_components.tokens.stage import StageInput, TokenSelection, scatter_to_grid

__all__ = ["record_retention"]


@contextmanager
def record_retention(network: torch.nn.Module) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Within the block, ``{stage: [alive, ...]}`` with one ``[B, *grid_shape]`` bool map per forward pass: the
    tokens alive after the pruner of ``stage`` (the tokens it was given and kept; padding rows excluded).

    A network without pruners (a baseline) records nothing: the dict stays empty.
    """
    maps: dict[int, list[torch.Tensor]] = {}
    pruners = getattr(network, "pruners", None) or {}

    def hook(stage: int):
        def record(module: torch.nn.Module, args: tuple, selection: TokenSelection) -> None:
            inputs: StageInput = args[0]
            keep = selection.keep_mask if inputs.valid is None else selection.keep_mask & inputs.valid
            grid = scatter_to_grid(inputs.token_index, keep.to(torch.uint8), math.prod(inputs.grid_shape))
            maps.setdefault(stage, []).append(grid.bool().reshape(-1, *inputs.grid_shape).cpu())

        return record

    handles = [pruner.register_forward_hook(hook(int(stage))) for stage, pruner in pruners.items()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
