"""The neutral token core below ``networks/`` and ``pruners/`` (docs/design.md §2).

- :mod:`.stage`: what a pruner and the executor exchange at a stage boundary (``StageInput``, ``TokenSelection``)
  and pure token helpers (``scatter_to_grid``, ``straight_through``).
- :mod:`.executor`: the executor ``TokenState`` (modes, fill policies) and the token reports (``StageReport``,
  ``BlockReport``, ``kept_token_work``).
- :mod:`.blocks`: a MONAI ``TransformerBlock`` on any token subset (``transformer_block_forward``).
- :mod:`.attention`: attention maps of the hierarchical blocks (``WindowAttention``, ``ReducedAttention``) and
  per-cell scores carried to coarser grids (``coarsen``).

Imports nothing from ``networks/`` or ``pruners/``; both import it.
"""

from prato_components.tokens.attention import (
    BlockOutput,
    ReducedAttention,
    WindowAttention,
    coarse_cells,
    coarsen,
    reduced_key_cells,
)
from prato_components.tokens.blocks import check_supported_block, transformer_block_forward
from prato_components.tokens.executor import (
    EXECUTOR_MODES,
    FILL_POLICIES,
    BlockReport,
    StageReport,
    TokenState,
    check_executor,
    kept_token_work,
)
from prato_components.tokens.stage import StageInput, TokenSelection, scatter_to_grid, straight_through, tracing

__all__ = [
    "BlockOutput",
    "ReducedAttention",
    "WindowAttention",
    "coarse_cells",
    "coarsen",
    "reduced_key_cells",
    "EXECUTOR_MODES",
    "FILL_POLICIES",
    "BlockReport",
    "StageInput",
    "StageReport",
    "TokenSelection",
    "TokenState",
    "check_executor",
    "check_supported_block",
    "kept_token_work",
    "scatter_to_grid",
    "straight_through",
    "tracing",
    "transformer_block_forward",
]
