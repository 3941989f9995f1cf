"""Range and type checks for config values, used by the schemas' ``__post_init__``.

Each check raises one ConfigError line: the key, the bad value and what is allowed, e.g.
``schedule.epochs=-1 is not allowed; allowed: an integer >= 1``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

from peftlab.errors import ConfigError


def refuse(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(key: str, value: Any, minimum: int | None = None, optional: bool = False) -> None:
    """An int (not a bool) >= ``minimum``; ``optional``: null is allowed too."""
    if value is None and optional:
        return
    if not _is_int(value) or (minimum is not None and value < minimum):
        allowed = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise refuse(key, value, allowed + (", or null" if optional else ""))


def number(
    key: str,
    value: Any,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    optional: bool = False,
) -> None:
    """A finite int or float within the given bounds (``above``/``below`` exclusive)."""
    if value is None and optional:
        return
    bounds = [
        (sign, compare, bound)
        for sign, compare, bound in (
            (">", operator.gt, above),
            (">=", operator.ge, at_least),
            ("<=", operator.le, at_most),
            ("<", operator.lt, below),
        )
        if bound is not None
    ]
    if not _is_number(value) or not all(compare(value, bound) for _, compare, bound in bounds):
        ranges = " and ".join(f"{sign} {bound}" for sign, _, bound in bounds)
        allowed = f"a finite number {ranges}".rstrip() + (", or null" if optional else "")
        raise refuse(key, value, allowed)


def choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    options = tuple(allowed)
    if value not in options:
        raise refuse(key, value, ", ".join(options))


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise refuse(key, value, "true, false")


def text(key: str, value: Any, optional: bool = False) -> None:
    """A non-empty string (a path, a name, a prompt)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise refuse(key, value, "a non-empty string" + (", or null" if optional else ""))


def numbers(key: str, value: Any, length: int, above: float | None = None, optional: bool = False) -> None:
    """A list of ``length`` finite numbers (each > ``above`` when given)."""
    if value is None and optional:
        return
    ok = isinstance(value, list | tuple) and len(value) == length and all(_is_number(v) for v in value)
    if not ok or (above is not None and any(v <= above for v in value)):
        allowed = f"a list of {length} numbers" + (f" > {above}" if above is not None else "")
        raise refuse(key, value, allowed + (", or null" if optional else ""))
