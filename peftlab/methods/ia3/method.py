"""(IA)^3 (Liu et al. 2022): learned vectors, ones at init, rescale the attention keys and values (the
output of their projections) and the FFN's intermediate activation (the input of its down projection);
nothing else of the backbone trains. The layer is ``layer.py``; the peft form is peft's ``IA3Config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab.blocks.params import freeze, train_head
from peftlab.blocks.protocol import adapter_layers
from peftlab.blocks.targeting import SUBLAYER_OUTPUTS, TargetSpec, match_targets, module_role, replace_module
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, register_method
from peftlab.methods.ia3.layer import Ia3Linear

FFN_OUTPUT = "ffn-output"  # the FFN's down projections: BERT's layer.N.output.dense, Llama's down_proj, fc2


@dataclass
class Ia3Config(MethodConfig):
    # layers whose output is scaled (peft's matching rules, blocks/targeting.py); key/value stand for
    # key_proj/value_proj (DeBERTa) and k_proj/v_proj (Llama, OPT, BART)
    target_modules: list[str] | str = field(default_factory=lambda: ["key", "value"])
    # layers whose input is scaled, as target_modules or ffn-output; null: none
    feedforward_modules: list[str] | str | None = FFN_OUTPUT

    def __post_init__(self) -> None:
        if not self.target_modules and not self.feedforward_modules:
            raise ConfigError("ia3 has no target: set target_modules and/or feedforward_modules")


def feedforward_names(model: nn.Module, spec: TargetSpec | None) -> list[str]:
    """The input-scaled layers: ``ffn-output`` means the projections closing each FFN (not attention's)."""
    if not spec:
        return []
    if spec == FFN_OUTPUT:
        names = match_targets(model, SUBLAYER_OUTPUTS, (nn.Linear,))
        names = [name for name in names if module_role(name) == "ffn"]
        if not names:
            raise ConfigError(f"feedforward_modules={FFN_OUTPUT}: the model has no FFN down projection")
        return names
    return match_targets(model, spec, (nn.Linear,))


def ia3_targets(model: nn.Module, cfg: Ia3Config) -> dict[str, bool]:
    """Every adapted layer, in model order, with whether it is input-scaled. As in peft, a layer named
    by both options is input-scaled (peft asks feedforward_modules to be a subset of target_modules)."""
    feedforward = set(feedforward_names(model, cfg.feedforward_modules))
    outputs = set(match_targets(model, cfg.target_modules, (nn.Linear,))) if cfg.target_modules else set()
    chosen = feedforward | outputs
    return {name: name in feedforward for name, _ in model.named_modules() if name in chosen}


@register_method("ia3")
class Ia3(Method):
    config_class = Ia3Config
    config: Ia3Config

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        for name, feedforward in ia3_targets(model.backbone, self.config).items():
            replace_module(model.backbone, name, Ia3Linear(model.backbone.get_submodule(name), feedforward))
        train_head(model)

    def peft_export(self, root: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
        """peft's IA3: full module names, and ``ia3_l`` shaped as peft holds it ((1, in) or (out, 1))."""
        from peft import IA3Config

        layers = adapter_layers(root)
        if not layers or any(not isinstance(m, Ia3Linear) for _, m in layers):
            raise ConfigError("method 'ia3': only ia3 layers go to peft's IA3; use --to merged")
        tensors = {}
        for name, layer in layers:
            vector = layer.ia3_l.detach()
            shape = (1, -1) if layer.feedforward else (-1, 1)
            tensors[f"base_model.model.{name}.ia3_l"] = vector.reshape(shape)
        config = IA3Config(
            target_modules=[name for name, _ in layers],
            feedforward_modules=[name for name, m in layers if m.feedforward],
        )
        return config, tensors
