"""Small helpers for code that runs the same under DDP/torchrun and in a single process."""

from __future__ import annotations

import torch.distributed as dist
import torch.nn as nn

__all__ = ["is_writer_rank", "unwrap"]


def is_writer_rank() -> bool:
    """``True`` unless this is a non-zero rank of an initialised process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else ``module`` itself."""
    return getattr(module, "module", module)
