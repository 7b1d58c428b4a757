"""Old import path of the executor, kept for users and configs: it lives in :mod:`prato_components.tokens.executor`
(the neutral core below ``networks/`` and ``pruners/``, docs/design.md §2)."""

from prato_components.tokens.executor import (
    EXECUTOR_MODES,
    FILL_POLICIES,
    BlockReport,
    StageReport,
    TokenState,
    check_executor,
    kept_token_work,
)

__all__ = [
    "EXECUTOR_MODES",
    "FILL_POLICIES",
    "BlockReport",
    "StageReport",
    "TokenState",
    "check_executor",
    "kept_token_work",
]
