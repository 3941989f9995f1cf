"""Adapter (Houlsby et al. 2019): a bottleneck h + up(act(down(h))) after the attention output and the
FFN output of every block, up zero-initialised (step 0 = base model); the head trains too."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.blocks.adapter import ACTIVATIONS, ADAPTER_INITS, BottleneckAdapter
from peftlab.blocks.lowrank import check_rank, wrap_targets
from peftlab.blocks.params import freeze, train_head
from peftlab.blocks.targeting import SUBLAYER_OUTPUTS
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, register_method


@dataclass
class AdapterConfig(MethodConfig):
    bottleneck: int = 8
    activation: str = "relu"
    scale: float = 1.0
    dropout: float = 0.1  # on the adapter's input
    # the attention-output and FFN-output projections; or names / a regex as in lora
    target_modules: list[str] | str = SUBLAYER_OUTPUTS
    bias: bool = True  # false: no biases in down and up (the Light-PEFT authors' adapter)
    init: str = "houlsby"  # houlsby: up zero (step 0 = base) | normal: down, up ~ N(0, 0.02) (Light-PEFT's)

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ConfigError(f"adapter bottleneck={self.bottleneck}; allowed: an integer >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"adapter dropout={self.dropout} is not allowed; allowed: 0 <= dropout < 1")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"adapter activation={self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if self.init not in ADAPTER_INITS:
            raise ConfigError(f"adapter init={self.init!r}; allowed: {', '.join(ADAPTER_INITS)}")


@register_method("adapter")
class Adapter(Method):
    config_class = AdapterConfig
    config: AdapterConfig
    merged_only_reason = (
        "huggingface peft has no bottleneck adapter (and --to merged refuses it too: the nonlinearity "
        "between its projections does not fold into the base weights)"
    )

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        cfg = self.config

        def make(name: str, layer: nn.Linear) -> BottleneckAdapter:
            check_rank(name, layer, cfg.bottleneck, option="adapter bottleneck")
            return BottleneckAdapter(
                layer, cfg.bottleneck, cfg.activation, cfg.scale, cfg.dropout, bias=cfg.bias, init=cfg.init
            )

        # bottleneck adapters sit on linear layers only (a conv target matches nothing: clear error);
        # a new adapter's tensors train
        wrap_targets(model.backbone, cfg.target_modules, make, (nn.Linear,))
        train_head(model)
