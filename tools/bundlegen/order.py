"""The reading order of a config chain: every ``@key`` defined before it is used."""

from __future__ import annotations

import re
from collections.abc import Sequence

REFERENCE = re.compile(r"@(\w+(?:#\w+)*)")


def _reading_events(node: object, node_id: str, events: list[tuple[str, str, str | None]]) -> None:
    """What a reader meets in ``node`` (id ``node_id``) in file order: ``("use", id, ref)`` for each ``@ref`` in a
    value or ``$`` expression, and ``("define", id, None)`` once the node and everything under it has been read."""
    if isinstance(node, str):
        events.extend(("use", node_id, ref) for ref in REFERENCE.findall(node))
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        _reading_events(value, f"{node_id}#{key}", events)
    events.append(("define", node_id, None))


def forward_references(configs: Sequence[dict], names: Sequence[str] | None = None) -> list[str]:
    """One message per ``@`` reference of ``configs`` that a reader meets before the key it names is defined.

    ``configs`` are read in order, as MONAI merges an overlay chain (``['train.json', 'evaluate.json']``), so a key of
    an earlier config counts as defined. A key counts as defined once it has been read to its end (a reference from
    inside the node it names is a cycle); ``@a#b`` is defined once ``a#b`` or ``a`` is."""
    names = list(names) if names is not None else [f"config {i}" for i in range(len(configs))]
    defined: set[str] = set()
    problems = []
    for name, config in zip(names, configs):
        events: list[tuple[str, str, str | None]] = []
        for key, value in config.items():
            _reading_events(value, key, events)
        for kind, node_id, ref in events:
            if kind == "define":
                defined.add(node_id)
                continue
            parts = ref.split("#")
            if not any("#".join(parts[:n]) in defined for n in range(1, len(parts) + 1)):
                problems.append(f"{name}: {node_id} uses @{ref} before it is defined")
    return problems
