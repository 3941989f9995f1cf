"""ELoRA / VeRA (Kopiczko et al.): frozen random projections, trainable scaling vectors.

    y = W0 x + b ⊙ B (d ⊙ A x),   A (r x in), B (out x r) frozen random; d = 0.1, b = 0 trainable.

As in peft's VeRA, one seeded pair sized to the largest layer is shared and sliced per layer
(``shared_projections=false``: one pair per layer). The pair is regenerated from ``projection_seed``
when a saved adapter is loaded, so only the vectors and the head are saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.blocks.lowrank import FixedProjections, wrap_with_vectors
from peftlab.blocks.params import freeze
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, register_method


@dataclass
class EloraConfig(MethodConfig):
    rank: int = 1024  # the AFLoRA paper's ELoRA; may exceed the layer width (projections are random)
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "key", "value", "dense"])
    d_init: float = 0.1
    b_init: float = 0.0
    shared_projections: bool = True
    projection_seed: int = 0
    save_projections: bool = False  # true: save the random pair too (else it is regenerated from the seed)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"elora rank={self.rank} is not allowed; allowed: an integer >= 1")


@register_method("elora")
class Elora(Method):
    config_class = EloraConfig
    config: EloraConfig

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        cfg = self.config
        layers = wrap_with_vectors(model.backbone, cfg.target_modules, cfg.rank, cfg.d_init, cfg.b_init)
        dtype = layers[0][1].base_layer.weight.dtype
        if cfg.shared_projections:
            shared = FixedProjections(
                cfg.rank,
                max(layer.in_features for _, layer in layers),
                max(layer.out_features for _, layer in layers),
                cfg.projection_seed,
                dtype,
            )
            for _, layer in layers:
                layer.use_fixed_projections(shared)
        else:
            for index, (_, layer) in enumerate(layers):
                own = FixedProjections(
                    cfg.rank, layer.in_features, layer.out_features, cfg.projection_seed + index, dtype
                )
                layer.use_fixed_projections(own)
        model.head.requires_grad_(True)
        self.projections = {f"{name}.fixed": layer.fixed for name, layer in layers}
        if cfg.shared_projections:  # one pair: save it once
            self.projections = dict(list(self.projections.items())[:1])

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = super().adapter_state_dict(model)
        if self.config.save_projections:
            for name, fixed in self.projections.items():
                state[f"{name}.A"], state[f"{name}.B"] = fixed.A, fixed.B
        return state

    def load_adapter_state_dict(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        with torch.no_grad():
            for name, fixed in self.projections.items():
                for key in ("A", "B"):
                    saved = tensors.pop(f"{name}.{key}", None)
                    if saved is not None:
                        getattr(fixed, key).copy_(saved)
        super().load_adapter_state_dict(model, tensors)
