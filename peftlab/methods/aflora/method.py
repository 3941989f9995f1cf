"""AFLoRA (Liu et al. 2024): adaptive freezing of low-rank adaptation.

    y = W0 x + s_b ⊙ B (s_d ⊙ A x),   A, B kaiming-uniform; s_d = 0.1, s_b = 0 (step 0 = base model)

The projection matrices (PMs) A and B train where ``pm_trainable`` says (default: FFN only; attention
PMs stay frozen at their random init); the vectors always train. A freezing score per PM (smoothed
sensitivity, ``blocks/importance.py``) and the cubic schedule (``blocks/schedules.py``) freeze the PMs
one by one; all are frozen by step T - t_f. A frozen PM leaves autograd and the optimizer (the loop
rebuilds it), so it costs no gradient, no optimizer state and no weight decay.

Freezing rules: ``code`` (the authors' code, default): every ``delta_t`` steps, the cutoff is the
k-th smallest element score over all still-trainable PMs, k = int(n * r(t)), and each PM whose mean
score is below it freezes; ``paper``: freeze the lowest-scoring PMs until a fraction r(t) of all PMs is
frozen.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from peftlab import distributed
from peftlab.blocks.importance import SENSITIVITIES, SmoothedSensitivity
from peftlab.blocks.lowrank import check_rank, vector_param_groups, wrap_with_vectors
from peftlab.blocks.params import freeze, train_head
from peftlab.blocks.schedules import cubic_fraction
from peftlab.blocks.selection import lowest
from peftlab.blocks.targeting import ALL_LINEAR, module_role
from peftlab.blocks.timing import median_step_times_around
from peftlab.errors import ConfigError
from peftlab.methods.base import (
    Method,
    MethodConfig,
    MethodReport,
    TrainState,
    json_bytes,
    register_method,
)

log = logging.getLogger(__name__)

PM_PLACEMENTS = ("ffn", "attention", "both", "none")
FREEZE_RULES = ("code", "paper")


@dataclass
class AfloraConfig(MethodConfig):
    rank: int = 4
    target_modules: list[str] | str = ALL_LINEAR  # q, k, v, attention-out, FFN in/out of every block
    pm_trainable: str = "ffn"  # ffn | attention | both | none (none: frozen random PMs, ELoRA-like)
    freezing: bool = True  # false: trainable PMs are never frozen
    score: str = "grad"  # grad |g| | weight_grad |p*g| | grad_over_weight |g/p|
    freeze_pairs: bool = False  # true: A and B of one layer freeze together (paper Table 8)
    freeze_rule: str = "code"  # code | paper (see module docstring)
    t_initial: float = 1.0  # t_i: epochs when >= 1, else a fraction of the total steps
    t_final: float = 0.7  # t_f: epochs when >= 1, else a fraction of the total steps
    delta_t: int = 10
    beta1: float = 0.85
    beta2: float = 0.95
    d_init: float = 0.1
    decay_vectors: bool = True  # weight decay on d and b, as the authors' code (1-D tensors are else exempt)
    b_init: float = 0.0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("pm_trainable", self.pm_trainable, PM_PLACEMENTS),
            ("score", self.score, SENSITIVITIES),
            ("freeze_rule", self.freeze_rule, FREEZE_RULES),
        ):
            if value not in allowed:
                raise ConfigError(f"aflora {name}={value!r} is not allowed; allowed: {', '.join(allowed)}")
        if self.delta_t < 1:
            raise ConfigError(f"aflora delta_t={self.delta_t} is not allowed; allowed: an integer >= 1")


def steps_of(value: float, steps_per_epoch: int, total_steps: int) -> int:
    """Epochs (>= 1) or a fraction of the run (< 1), as optimizer steps."""
    return round(value * steps_per_epoch) if value >= 1 else round(value * total_steps)


@register_method("aflora")
class Aflora(Method):
    config_class = AfloraConfig
    output_files = ("freeze_trace.json", "freeze_heatmap.png")
    config: AfloraConfig
    bench_states = ("frozen",)
    merged_only_reason = (
        "huggingface peft has no AFLoRA: its projection pairs are per layer, trained and then frozen "
        "(VeRA's are one random pair, never trained)"
    )

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return vector_param_groups(model, self.config.decay_vectors)

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        cfg = self.config
        layers = wrap_with_vectors(
            model.backbone, cfg.target_modules, cfg.rank, cfg.d_init, cfg.b_init, init="kaiming"
        )
        self.pm_names: list[str] = []
        pms: list[nn.Parameter] = []
        for name, layer in layers:
            check_rank(name, layer.base_layer, cfg.rank)
            trainable = cfg.pm_trainable in (module_role(name), "both")
            for key, param in layer.named_projections().items():  # A, then B
                param.requires_grad_(trainable)
                if trainable:
                    self.pm_names.append(f"backbone.{name}.{key}")
                    pms.append(param)
        train_head(model)
        self.scorer = SmoothedSensitivity(pms, cfg.score, cfg.beta1, cfg.beta2, cfg.delta_t)
        self.frozen_at: dict[str, int] = {}
        self.scored = cfg.freezing and bool(pms)

    # -- hooks ------------------------------------------------------------------------------------
    def check_schedule(self, scheduled_steps: int, steps_per_epoch: int) -> None:
        """Warn when the freezing ramp is empty (T - t_f <= t_i): every PM then freezes at t_i at once,
        not by its score, which is not AFLoRA's schedule (short smoke runs still run)."""
        cfg = self.config
        t_i, t_f = self._freeze_window(scheduled_steps, steps_per_epoch)
        if self.scored and scheduled_steps - t_f <= t_i:
            log.warning(
                "aflora t_initial=%s (%d steps) and t_final=%s (%d steps) leave no freezing ramp in a "
                "%d-step run (T - t_f = %d <= t_i): every PM freezes at step %d at once, not by its score; "
                "give them as fractions of the run (method=aflora_fractions) or train longer",
                cfg.t_initial, t_i, cfg.t_final, t_f, scheduled_steps, scheduled_steps - t_f, t_i,
            )  # fmt: skip

    def _freeze_window(self, total_steps: int, steps_per_epoch: int) -> tuple[int, int]:
        """(t_i, t_f) in optimizer steps: the config's epochs or fractions of the run."""
        cfg = self.config
        return steps_of(cfg.t_initial, steps_per_epoch, total_steps), steps_of(
            cfg.t_final, steps_per_epoch, total_steps
        )

    def after_backward(self, state: TrainState) -> None:
        if self.scored and self.scorer.active:
            self.scorer.accumulate()

    def after_step(self, state: TrainState) -> None:
        if not self.scored or not self.scorer.active:
            return
        window_closed = self.scorer.window_full()
        if window_closed:
            self.scorer.update()
        t_i, t_f = self._freeze_window(state.total_steps, state.steps_per_epoch)
        fraction = cubic_fraction(state.step, state.total_steps, t_i, t_f)
        if fraction >= 1.0:
            self._freeze(list(self.scorer.active), state)
        elif fraction > 0 and window_closed:
            self._freeze(self._select(fraction), state)

    def on_train_end(self, state: TrainState) -> None:
        if self.scored:  # e.g. max_steps cut the schedule short
            self.freeze_all(state)

    def freeze_all(self, state: TrainState) -> None:
        """Freeze every PM still trainable (what the schedule has done by step T - t_f)."""
        self._freeze(list(self.scorer.active), state)

    def bench_state(self, name: str, state: TrainState, step: Callable[[], None]) -> str:
        """``frozen``: every PM frozen, the state after the freezing schedule."""
        if name != "frozen":
            return super().bench_state(name, state, step)
        self.freeze_all(state)
        return ""

    # -- freezing ---------------------------------------------------------------------------------
    def _groups(self, active: list[int]) -> list[list[int]]:
        """Units that freeze together: single PMs, or the A/B pair of one layer."""
        if not self.config.freeze_pairs:
            return [[i] for i in active]
        pairs: dict[int, list[int]] = {}
        for i in active:
            pairs.setdefault(i // 2, []).append(i)  # PMs are registered as A, B of each layer in turn
        return list(pairs.values())

    def _select(self, fraction: float) -> list[int]:
        active = self.scorer.active
        groups = self._groups(active)
        means = self.scorer.scores(active)
        by_index = dict(zip(active, means.tolist(), strict=True))
        group_scores = [statistics.fmean(by_index[i] for i in g) for g in groups]
        if self.config.freeze_rule == "code":
            elements = torch.cat([self.scorer.element_scores(i).flatten() for i in active])
            k = int(elements.numel() * fraction)
            if k < 1:
                return []
            cutoff = float(torch.kthvalue(elements, k).values)
            return [i for g, s in zip(groups, group_scores, strict=True) if s < cutoff for i in g]
        total = len(self.scorer.params)
        to_freeze = math.floor(fraction * total) - (total - len(active))
        chosen: list[int] = []
        for g in lowest(torch.tensor(group_scores, device="cpu"), len(groups)).tolist():  # lowest score first
            if len(chosen) >= to_freeze:
                break
            chosen.extend(groups[g])
        return chosen

    def _freeze(self, indices: list[int], state: TrainState) -> None:
        distributed.assert_ranks_agree(f"AFLoRA PMs to freeze at step {state.step}", sorted(indices))
        if not indices:
            return
        for i in indices:
            param = self.scorer.params[i]
            param.requires_grad_(False)
            param.grad = None
            self.frozen_at[self.pm_names[i]] = state.step
        frozen = set(indices)
        self.scorer.set_active([i for i in self.scorer.active if i not in frozen])
        state.params_changed()

    # -- results ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"scorer": self.scorer.state_dict(), "frozen_at": dict(self.frozen_at)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.scorer.load_state_dict(state["scorer"])
        self.frozen_at = dict(state["frozen_at"])
        for i, param in enumerate(self.scorer.params):
            param.requires_grad_(i in self.scorer.active)

    def report(self, state: TrainState, step_times: list[float]) -> MethodReport:
        trace = {name: self.frozen_at.get(name) for name in self.pm_names}
        files = {"freeze_trace.json": json_bytes(trace)}
        report: dict[str, Any] = {
            "freeze_trace": "freeze_trace.json",
            "pms_trainable_at_start": len(trace),
            "pms_frozen": sum(v is not None for v in trace.values()),
        }
        if trace and all(v is not None for v in trace.values()):
            first, last = min(trace.values()), max(trace.values())
            before, after = median_step_times_around(step_times, first, last)
            report["median_step_time_before_freezing_s"] = before
            report["median_step_time_after_freezing_s"] = after
            report["first_freeze_step"], report["all_frozen_step"] = first, last
        if any(v is not None for v in trace.values()):
            files["freeze_heatmap.png"] = self._heatmap(trace)
            report["freeze_heatmap"] = "freeze_heatmap.png"
        return MethodReport(report, files)

    @staticmethod
    def _heatmap(trace: dict[str, int | None]) -> bytes:
        """Steps before each PM froze, per layer x (module, A/B): the paper's Figure 5."""
        from peftlab.figures import heatmap

        cells: dict[tuple[int, str], float] = {}
        for name, step in trace.items():
            match = re.search(r"\.(\d+)\.(.+)\.([^.]+)$", name)  # ...layer.N.<module>.<projection>
            layer, module, pm = (int(match[1]), match[2], match[3]) if match else (0, name, "")
            cells[(layer, f"{module.split('.')[0]} {pm}".strip())] = np.nan if step is None else step
        layers = sorted({k[0] for k in cells})
        columns = sorted({k[1] for k in cells})
        values = np.array([[cells.get((r, c), np.nan) for c in columns] for r in layers], dtype=float)
        return heatmap(
            values,
            [f"layer {r}" for r in layers],
            columns,
            "AFLoRA: step at which each PM froze",
            "step",
        )
