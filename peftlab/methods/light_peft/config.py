"""Light-PEFT's options and their checks (values: conf/method/light_peft.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftlab.errors import ConfigError
from peftlab.methods.base import MethodConfig

PEFT_NAMES = ("lora", "adapter")
HEAD_COUNTS = ("quantile", "floor")


@dataclass
class LightPeftConfig(MethodConfig):
    # The wrapped PEFT module (a lora or adapter method config), composed from conf/method/light_peft_modules/
    # (the one place its values are written).
    peft: dict[str, Any] = field(default_factory=dict)
    # The authors' protocol: estimation is its own run of ``estimation_steps`` (800 in their scripts, the LR
    # decaying to 0 within it), then a fresh run (new optimizer, restarted LR schedule) on the pruned model.
    estimation_steps: int | None = 800  # null: estimation_ratio of the scheduled steps
    restart_after_pruning: bool = True  # false: one run, estimation its first steps, Adam moments kept
    estimation_ratio: float = 0.1  # fraction of the training steps spent estimating (estimation_steps null)
    l1_coef: float = 1e-4
    head_mask_lr_coef: float = 1.0  # mask LR = schedule LR x coef (the authors' scripts: 1)
    ffn_mask_lr_coef: float = 1.0
    head_ratio: float = 1 / 3  # of each layer's head units
    head_count: str = "quantile"  # quantile: heads below the ratio-quantile go (the authors' code) | floor
    ffn_ratio: float = 1 / 3  # of all FFN channels
    module_ratio: float = 0.75  # of the PEFT modules
    rank_ratio: float = 0.5  # of the ranks of the kept modules

    def __post_init__(self) -> None:
        if self.peft.get("name") not in PEFT_NAMES:
            raise ConfigError(
                f"light_peft peft.name={self.peft.get('name')!r}; allowed: {', '.join(PEFT_NAMES)}"
            )
        if self.estimation_steps is not None and (
            isinstance(self.estimation_steps, bool)
            or not isinstance(self.estimation_steps, int)
            or self.estimation_steps < 2
        ):
            raise ConfigError(
                f"light_peft estimation_steps={self.estimation_steps!r}; allowed: an integer >= 2, or null"
            )
        if not isinstance(self.restart_after_pruning, bool):
            raise ConfigError(
                f"light_peft restart_after_pruning={self.restart_after_pruning!r}; allowed: true, false"
            )
        if not 0 < self.estimation_ratio < 1:
            raise ConfigError(f"light_peft estimation_ratio={self.estimation_ratio}; allowed: 0 < ratio < 1")
        if self.head_count not in HEAD_COUNTS:
            raise ConfigError(f"light_peft head_count={self.head_count!r}; allowed: {', '.join(HEAD_COUNTS)}")
        for key in ("head_ratio", "ffn_ratio", "module_ratio", "rank_ratio"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"light_peft {key}={getattr(self, key)}; allowed: 0 <= ratio < 1")
