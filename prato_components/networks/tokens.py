"""Old import path of the executor, kept for users and configs: it lives in :mod:`prato_components.tokens.executor`
(the neutral core below ``networks/`` and ``pruners/``, docs/design.md §2)."""

from prato_components.tokens import executor as _executor
from prato_components.tokens.executor import *  # noqa: F403 - re-exports exactly the executor's __all__

__all__ = list(_executor.__all__)
