"""A config as dotted key -> value: the form in which two runs' configs are compared."""

from __future__ import annotations

from typing import Any


def dotted_items(
    tree: dict[str, Any], skip: set[str] | frozenset[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Every leaf of ``tree`` (nested dicts) under its dotted key; top-level keys in ``skip`` left out."""
    flat: dict[str, Any] = {}
    stack = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((dotted + ".", value))
            elif dotted.split(".")[0] not in skip:
                flat[dotted] = value
    return flat
