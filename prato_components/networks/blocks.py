"""Old import path of the ViT block forward, kept for users: it lives in :mod:`prato_components.tokens.blocks`
(the neutral core below ``networks/`` and ``pruners/``, docs/design.md §2)."""

from prato_components.tokens.blocks import check_supported_block, transformer_block_forward

__all__ = ["check_supported_block", "transformer_block_forward"]
