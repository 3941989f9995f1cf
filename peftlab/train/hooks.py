"""Which methods change parameters between steps, for the options that cannot follow them."""

from __future__ import annotations

from peftlab.errors import ConfigError
from peftlab.methods.base import Method

STEP_HOOKS = ("extra_loss", "after_backward", "after_step")


def refuse_step_hooks(method: Method, option: str, reason: str, allowed: str) -> None:
    """Refuse ``option`` up front for a method with per-step hooks (AFLoRA's scores and freezing,
    Light-PEFT's masks, score hooks and pruning): they read and change parameters between steps, which
    FSDP holds as shards and a compiled graph has specialised on."""
    hooks = [name for name in STEP_HOOKS if getattr(type(method), name) is not getattr(Method, name)]
    if hooks:
        raise ConfigError(
            f"{option}: method {method.name} has per-step hooks ({', '.join(hooks)}) that read or change "
            f"parameters outside the forward ({reason}); allowed: {allowed} for this method"
        )
