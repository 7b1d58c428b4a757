"""Old import path of the data set readers and the saved split, kept for users: they live in
:mod:`prato_components.data.readers` and :mod:`prato_components.data.splits`."""

from prato_components.data import readers as _readers
from prato_components.data import splits as _splits
from prato_components.data.readers import *  # noqa: F403 - re-exports exactly the readers' __all__
from prato_components.data.splits import *  # noqa: F403 - re-exports exactly the splits' __all__

__all__ = sorted(_readers.__all__ + _splits.__all__)
