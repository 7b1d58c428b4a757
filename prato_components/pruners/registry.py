"""Pruners by name, so bundles and tools configure them with a string (like timm's ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable

from prato_components.pruners.base import TokenPruner

__all__ = ["PRUNERS", "create_pruner", "register_pruner"]

PRUNERS: dict[str, type[TokenPruner]] = {}


def register_pruner(name: str) -> Callable[[type[TokenPruner]], type[TokenPruner]]:
    """Class decorator: make a :class:`TokenPruner` subclass available as ``create_pruner(name, ...)``."""

    def add(cls: type[TokenPruner]) -> type[TokenPruner]:
        if name in PRUNERS and PRUNERS[name] is not cls:
            raise ValueError(f"a pruner named {name!r} is already registered ({PRUNERS[name].__name__})")
        PRUNERS[name] = cls
        return cls

    return add


def create_pruner(name: str, **kwargs) -> TokenPruner:
    """Build the pruner registered as ``name`` with ``kwargs``."""
    key = name.lower()
    if key not in PRUNERS:
        raise ValueError(f"unknown pruner name {name!r}; choose one of {sorted(PRUNERS)}")
    return PRUNERS[key](**kwargs)
