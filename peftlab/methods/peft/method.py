"""huggingface peft's own tuners on the backbone: ``get_peft_model(model.backbone, <type>Config(**config))``,
a peer to compare peftlab's methods with (``scripts/bench.py``'s default row). The head stays peftlab's and
is trained; peft freezes the backbone's base weights and trains what its tuner adds. Exports: peft's own
adapter folder (``--to peft``), or peft's ``merge_and_unload`` (``--to merged``)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab.blocks.params import freeze, train_head
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, register_method

MANAGED = ("peft_type",)  # set by peft_type, not by config


def peft_config_class(peft_type: str) -> type:
    """peft's config class of ``peft_type`` (LORA, VERA, IA3, ...): tuners that wrap modules; prompt
    learning (prefix, prompt tuning) needs a peft task model, not a backbone."""
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    classes = {
        str(getattr(key, "value", key)): cls
        for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
        if not issubclass(cls, PromptLearningConfig)
    }
    if peft_type not in classes:
        allowed = ", ".join(sorted(classes))
        raise ConfigError(f"peft peft_type={peft_type!r} is not allowed; allowed: {allowed}")
    return classes[peft_type]


@dataclass
class PeftConfig(MethodConfig):
    peft_type: str = "LORA"
    config: dict[str, Any] = field(default_factory=dict)  # keyword arguments of peft's <peft_type>Config

    def __post_init__(self) -> None:
        cls = peft_config_class(self.peft_type)
        allowed = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in MANAGED)
        unknown = sorted(set(self.config) - set(allowed))
        if unknown:
            raise ConfigError(
                f"peft config key(s) {unknown} are not options of peft's {cls.__name__}; "
                f"allowed: {', '.join(allowed)}"
            )

    def build(self) -> Any:
        """peft's config object."""
        return peft_config_class(self.peft_type)(**self.config)


@register_method("peft")
class Peft(Method):
    """huggingface peft's tuner on ``model.backbone``; the head trains. peft injects its layers into the
    backbone in place, so the model runs the backbone itself; the PeftModel is kept for saving and merging."""

    config_class = PeftConfig
    config: PeftConfig

    def attach(self, model: nn.Module) -> None:
        from peft import get_peft_model

        freeze(model)
        self.wrapped = get_peft_model(model.backbone, self.config.build())
        train_head(model)

    def peft_export(self, root: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
        """peft's own config and tensors, when the model others load is the backbone peft wrapped."""
        from peft import get_peft_model_state_dict

        if self.wrapped.get_base_model() is not root:
            raise ConfigError(
                f"method peft wrapped the backbone, not the {type(root).__name__} others load (a causal "
                "LM's decoder): peft's names would not match it; use --to merged"
            )
        return copy.deepcopy(self.wrapped.peft_config["default"]), get_peft_model_state_dict(self.wrapped)

    def merge_into_base(self, model: nn.Module) -> None:
        """peft's own merge, in place: the backbone holds plain layers again."""
        self.wrapped.merge_and_unload()
