"""Backbones with pruning hooks and the token executor."""

from prato_components.networks.blocks import transformer_block_forward
from prato_components.networks.inputs import check_image, check_network_boxes
from prato_components.networks.tokens import EXECUTOR_MODES, FILL_POLICIES, StageReport, TokenState
from prato_components.networks.unetr import UNETR_STAGES, PrunedUNETR, patch_unetr
