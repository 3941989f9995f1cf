"""Name -> class registries. Methods and tasks register themselves on import; the loop looks them up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from peftlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of plugins with an error that lists what is available."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        _load_plugins()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        _load_plugins()
        return sorted(self._entries)


METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task")
LORA_VARIANTS: Registry = Registry("lora variant")  # peftlab/methods/lora: LowRankVariant subclasses


_plugins_loaded = False


def _load_plugins() -> None:
    """Import every module under peftlab.methods and peftlab.tasks so that their decorators run.

    A new method is one folder in peftlab/methods plus one YAML in conf/method (a LoRA variant is one
    module in peftlab/methods/lora): nothing else to edit.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib
    import pkgutil

    for package_name in ("peftlab.methods", "peftlab.tasks"):
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(info.name)
