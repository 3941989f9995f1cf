"""ELoRA / VeRA (Kopiczko et al.): frozen random projections, trainable scaling vectors.

    y = W0 x + b ⊙ B (d ⊙ A x),   A (r x in), B (out x r) frozen random; d = 0.1, b = 0 trainable.

As in peft's VeRA, one seeded pair sized to the largest layer is shared and sliced per layer, drawn
as peft draws it (``shared_projections=false``: one pair per layer). The pair is regenerated from
``projection_seed`` when a saved adapter is loaded, so only the vectors and the head are saved
(``save_projections=true``: the pair too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab.blocks.lowrank import FixedProjections, vector_param_groups, wrap_with_vectors
from peftlab.blocks.params import freeze, train_head
from peftlab.blocks.targeting import ALL_LINEAR
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, peft_linear_layers, register_method


@dataclass
class EloraConfig(MethodConfig):
    rank: int = 1024  # the AFLoRA paper's ELoRA; may exceed the layer width (projections are random)
    target_modules: list[str] | str = ALL_LINEAR  # q, k, v, attention-out, FFN in/out of every block
    d_init: float = 0.1
    decay_vectors: bool = True  # weight decay on d and b, as the authors' code (1-D tensors are else exempt)
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

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return vector_param_groups(model, self.config.decay_vectors)

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        cfg = self.config
        layers = wrap_with_vectors(
            model.backbone, cfg.target_modules, cfg.rank, cfg.d_init, cfg.b_init, init="fixed"
        )
        for _ in layers:  # peft's VeRA draws each layer's d (randn(r)) before setting it to d_init: the
            torch.randn(cfg.rank, device="cpu")  # same draws, so every dropout mask after them is peft's too
        weight = layers[0][1].base_layer.weight
        dtype, device = weight.dtype, weight.device
        shared = None
        if cfg.shared_projections:  # sized to the largest layer; saved once when saved
            shared = FixedProjections(
                cfg.rank,
                max(layer.in_features for _, layer in layers),
                max(layer.out_features for _, layer in layers),
                cfg.projection_seed,
                dtype,
                device,
            )
        for index, (_, layer) in enumerate(layers):
            own = shared or FixedProjections(
                cfg.rank, layer.in_features, layer.out_features, cfg.projection_seed + index, dtype, device
            )
            layer.use_fixed_projections(own, save=cfg.save_projections)
        train_head(model)

    def peft_export(self, root: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
        """peft's VeRA: the shared frozen pair (saved, ``save_projection``) and the vectors d, b."""
        from peft import VeraConfig

        cfg = self.config
        layers = peft_linear_layers(root, self.name)
        pairs = {id(m.fixed) for _, m in layers}
        if not cfg.shared_projections or len(pairs) != 1 or layers[0][1].fixed is None:
            raise ConfigError(
                "peft's VeRA shares one projection pair; elora shared_projections=false: --to merged"
            )
        fixed = layers[0][1].fixed
        tensors = {"base_model.vera_A": fixed.A, "base_model.vera_B": fixed.B}
        for name, layer in layers:
            tensors[f"base_model.model.{name}.vera_lambda_d"] = layer.vec_d.detach()
            tensors[f"base_model.model.{name}.vera_lambda_b"] = layer.vec_b.detach()
        config = VeraConfig(
            r=layers[0][1].rank,
            target_modules=[name for name, _ in layers],
            projection_prng_key=cfg.projection_seed,
            save_projection=True,
            d_initial=cfg.d_init,
        )
        return config, tensors
