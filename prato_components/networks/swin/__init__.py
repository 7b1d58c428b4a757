"""Pruned Swin blocks for :class:`prato_components.networks.swin_unetr.PrunedSwinUNETR`: window planning
(:mod:`.windows`), block forwards on live tokens (:mod:`.blocks`) and the live tokens of a grid as the blocks read
them and as they move through patch merging (:mod:`.live`)."""

from prato_components.networks.swin.blocks import swin_block_forward, swin_block_forward_masked
from prato_components.networks.swin.live import live_tokens, parent_stages, parents, set_live_tokens
from prato_components.networks.swin.windows import (
    LayerWindows,
    WindowLayout,
    WindowPlan,
    block_layout,
    plan_windows,
    window_layout,
)

__all__ = [
    "LayerWindows",
    "WindowLayout",
    "WindowPlan",
    "block_layout",
    "live_tokens",
    "parent_stages",
    "parents",
    "plan_windows",
    "set_live_tokens",
    "swin_block_forward",
    "swin_block_forward_masked",
    "window_layout",
]
