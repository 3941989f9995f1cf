"""Which layers a method adapts: peft's matching rules, with an error when a pattern matches nothing."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from peftlab.errors import ConfigError

TargetSpec = str | Sequence[str]


def _matches(name: str, key: str) -> bool:
    return name == key or name.endswith("." + key)


def match_targets(
    model: nn.Module, targets: TargetSpec, layer_types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> list[str]:
    """Names of the modules of ``layer_types`` in ``model`` selected by ``targets``.

    As in peft: a string is a regex that must fullmatch the module name; a list selects names equal to
    an entry or ending in ``.<entry>``. Unlike peft, every list entry must match something, so a typo
    in one of several keys fails loudly instead of silently training fewer layers.
    """
    candidates = [name for name, module in model.named_modules() if isinstance(module, layer_types)]
    if isinstance(targets, str):
        selected = [name for name in candidates if re.fullmatch(targets, name)]
        if not selected:
            raise ConfigError(f"target_modules regex {targets!r} matches no layer; {_available(candidates)}")
        return selected
    keys = list(targets)
    if not keys:
        raise ConfigError(f"target_modules is empty; {_available(candidates)}")
    unmatched = [key for key in keys if not any(_matches(name, key) for name in candidates)]
    if unmatched:
        raise ConfigError(f"target_modules {unmatched} match no layer; {_available(candidates)}")
    return [name for name in candidates if any(_matches(name, key) for key in keys)]


def _available(candidates: list[str]) -> str:
    leaves = sorted({name.rsplit(".", 1)[-1] for name in candidates})
    example = candidates[0] if candidates else "none"
    return f"allowed: layer names or suffixes such as {leaves} (e.g. {example!r}), or a regex string"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` was."""
    model.set_submodule(name, new)
