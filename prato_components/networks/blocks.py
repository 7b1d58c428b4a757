"""Old import path of the ViT block forward, kept for users: it lives in :mod:`prato_components.tokens.blocks`
(the neutral core below ``networks/`` and ``pruners/``, docs/design.md §2)."""

from prato_components.tokens import blocks as _blocks
from prato_components.tokens.blocks import *  # noqa: F403 - re-exports exactly the blocks module's __all__

__all__ = list(_blocks.__all__)
