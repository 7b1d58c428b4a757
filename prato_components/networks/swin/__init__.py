"""Pruned Swin blocks for :class:`prato_components.networks.swin_unetr.PrunedSwinUNETR`: window planning
(:mod:`.windows`) and block forwards on live tokens (:mod:`.blocks`)."""

from prato_components.networks.swin.blocks import swin_block_forward, swin_block_forward_masked
from prato_components.networks.swin.windows import WindowLayout, WindowPlan, block_layout, plan_windows, window_layout

__all__ = [
    "WindowLayout",
    "WindowPlan",
    "block_layout",
    "plan_windows",
    "swin_block_forward",
    "swin_block_forward_masked",
    "window_layout",
]
