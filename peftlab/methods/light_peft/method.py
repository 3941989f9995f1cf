"""Light-PEFT (Gu et al. 2024): early pruning of the foundation model and of the PEFT modules, in one run.

1. Estimation (``estimation_steps``, or ``estimation_ratio`` of the steps): trainable masks on head units
   and FFN channels (init 1, L1 penalty ``l1_coef`` in the loss, LR = schedule LR x ``*_mask_lr_coef``) train
   with the PEFT module (``peft``: a ``lora`` or ``adapter`` config). Over the second half of these
   steps each PEFT module's importance ||ΔW x|| / ||W x|| (mean over non-pad tokens) and each rank's
   first-order Taylor score |mean_in(A ⊙ dA)| + |mean_out(B ⊙ dB)| are averaged.
2. Pruning, then normal training: the lowest-mask heads of every layer (``head_ratio``), the
   lowest-mask FFN channels over all layers (``ffn_ratio``), the least important PEFT modules
   (``module_ratio``) and ranks over all kept modules (``rank_ratio``) are removed physically (weights
   sliced, head counts updated, masks dropped). With ``restart_after_pruning`` (the authors' protocol)
   the estimation was a run of its own (``Method.first_run_steps``: its own LR schedule) and the pruned
   model trains for the scheduled steps with a fresh optimizer and a restarted LR schedule; without it
   the loop rebuilds the optimizer (Adam moments kept) and the one schedule goes on.

Counts decide what goes: floor(ratio x n) FFN channels, modules and ranks; per layer, the heads strictly
below the ratio-quantile of its masks, ceil((n - 1) x ratio), as the authors' quantile rule (4 of 12 heads
at 1/3; ``head_count=floor``: floor(ratio x n)).
The kept indices go to ``light_peft_pruning.json`` and the final mask values to
``light_peft_masks.safetensors``, apart from the adapter: ``eval_only`` prunes the same base model again.
In a Llama-style model with grouped KV heads the head unit is a whole KV group.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from peftlab import distributed
from peftlab.blocks.masks import StructureMasks
from peftlab.blocks.params import copied_to, count_parameters, default_param_groups
from peftlab.blocks.structure import blocks
from peftlab.errors import ConfigError
from peftlab.methods.base import (
    Method,
    MethodReport,
    TrainState,
    build_method,
    json_bytes,
    register_method,
    safetensors_bytes,
)
from peftlab.methods.light_peft.config import LightPeftConfig
from peftlab.methods.light_peft.notes import kept_modules_note
from peftlab.methods.light_peft.pruning import apply_pruning, choose_pruning, pruning_report
from peftlab.methods.light_peft.scores import EstimationScores, peft_layers

log = logging.getLogger(__name__)

MASKS = "light_peft_masks"  # the masks' module name inside the model while they exist
PRUNING_FILE = "light_peft_pruning.json"


@register_method("light_peft")
class LightPeft(Method):
    """Estimation (masks + PEFT scores), pruning at ``estimation_steps``, then training the smaller model."""

    config_class = LightPeftConfig
    output_files = (PRUNING_FILE, f"{MASKS}.safetensors")
    config: LightPeftConfig
    bench_states = ("pruned", "scoring")
    merged_only_reason = (
        "it prunes heads and FFN channels of the base model, which an adapter on the original base "
        "cannot express"
    )

    def __init__(self, config: LightPeftConfig) -> None:
        super().__init__(config)
        self.inner = build_method(OmegaConf.create(config.peft))
        self.masks: StructureMasks | None = None
        self.scores = EstimationScores()
        self.estimation_steps = 0
        self.record: dict[str, Any] | None = None  # what was pruned (saved as PRUNING_FILE)
        self.final_masks: dict[str, torch.Tensor] = {}

    # -- set-up: the PEFT module plus masks ---------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        self.inner.attach(model)
        self.blocks = blocks(model.backbone)
        self.masks = StructureMasks(model.backbone, self.blocks)
        model.add_module(MASKS, self.masks)  # part of the model while estimating: moved, counted, trained
        self.masks.apply_to(model.backbone)
        self.scores.watch_inputs(model)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if self.masks is None:
            return default_param_groups(model)
        mask_ids = {id(p) for p in self.masks.parameters()}
        groups = [
            {**g, "params": [p for p in g["params"] if id(p) not in mask_ids]}
            for g in default_param_groups(model)
        ]
        cfg = self.config
        return [g for g in groups if g["params"]] + [
            {
                "params": [self.masks.head],
                "part": "head_masks",
                "lr_scale": cfg.head_mask_lr_coef,
                "weight_decay": 0.0,
            },
            {
                "params": [self.masks.ffn],
                "part": "ffn_masks",
                "lr_scale": cfg.ffn_mask_lr_coef,
                "weight_decay": 0.0,
            },
        ]

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return self.config.l1_coef * self.masks.l1() if self.masks is not None else None

    # -- estimation ---------------------------------------------------------------------------------
    def _in_second_half(self, step: int) -> bool:
        return self.masks is not None and self.estimation_steps // 2 < step <= self.estimation_steps

    def _set_estimation_steps(self, total_steps: int) -> None:
        """Estimation inside the run: its first ``estimation_steps`` (or ``estimation_ratio``) steps."""
        if total_steps < 3:
            raise ConfigError(f"light_peft needs at least 3 training steps, this run has {total_steps}")
        fixed = self.config.estimation_steps
        if fixed is not None and fixed >= total_steps:
            raise ConfigError(
                f"light_peft estimation_steps={fixed} leaves no step to train the pruned model (the run has "
                f"{total_steps}); lower it, or set restart_after_pruning=true (a separate estimation run)"
            )
        self.estimation_steps = min(self._estimation_length(total_steps), total_steps - 1)

    def _estimation_length(self, steps: int) -> int:
        """``estimation_steps``, or ``estimation_ratio`` of ``steps`` (at least 2)."""
        fixed = self.config.estimation_steps
        return fixed or max(2, math.ceil(self.config.estimation_ratio * steps))

    def first_run_steps(self, scheduled_steps: int) -> int:
        """With ``restart_after_pruning`` the estimation is a separate run ahead of the scheduled steps."""
        if not self.config.restart_after_pruning:
            return 0
        self.estimation_steps = self._estimation_length(scheduled_steps)
        return self.estimation_steps

    def after_backward(self, state: TrainState) -> None:
        if not self.estimation_steps:
            self._set_estimation_steps(state.total_steps)
        if self._in_second_half(state.step + 1):
            self.scores.add_step(state.model)

    def after_step(self, state: TrainState) -> None:
        if self.masks is None:
            return
        if state.step == self.estimation_steps // 2:  # the next forward starts the second half
            self.scores.start_module_scores(state.model)
        if state.step == self.estimation_steps:
            self.prune(state.model)
            state.params_changed()

    # -- pruning ------------------------------------------------------------------------------------
    def prune(self, model: nn.Module) -> None:
        """Choose what goes from the masks and the averaged PEFT scores, then remove it physically."""
        masks = self.masks
        assert masks is not None
        before = count_parameters(model) - masks.head.numel() - masks.ffn.numel()
        module_scores, rank_scores = self.scores.averages(dict(peft_layers(model)))
        record = choose_pruning(self.config, masks, module_scores, rank_scores)
        distributed.assert_ranks_agree(
            "Light-PEFT pruning", {k: v for k, v in record.items() if k != "module_scores"}
        )
        self.final_masks = {"head": masks.head.detach().cpu(), "ffn": masks.ffn.detach().cpu()}
        self._drop_masks(model)
        apply_pruning(model.backbone, self.blocks, record)
        record.update(
            {"step": self.estimation_steps, "params_before": before, "params_after": count_parameters(model)}
        )
        self.record = record
        log.info(
            "light_peft: pruned at step %d: heads %d -> %d, FFN channels %d -> %d, PEFT modules %d -> %d, "
            "params %d -> %d",
            self.estimation_steps,
            self.final_masks["head"].numel(),
            sum(len(v) for v in record["heads"].values()),
            self.final_masks["ffn"].numel(),
            sum(len(v) for v in record["ffn_channels"].values()),
            len(module_scores),
            len(record["ranks"]),
            before,
            record["params_after"],
        )

    def _drop_masks(self, model: nn.Module) -> None:
        self.scores.stop()
        if self.masks is not None:
            self.masks.remove()
            delattr(model, MASKS)
            self.masks = None

    # -- reporting, saving, reloading ---------------------------------------------------------------
    def report(self, state: TrainState, step_times: list[float]) -> MethodReport:
        files = {}
        if self.record is not None:
            files[PRUNING_FILE] = json_bytes(self.record)
            files[f"{MASKS}.safetensors"] = safetensors_bytes(self.final_masks)
        return MethodReport(pruning_report(self.record, step_times), files)

    def state_dict(self) -> dict[str, Any]:
        """The phase and scores; the masks themselves are trained tensors, saved with the adapter."""
        return {
            "estimation_steps": self.estimation_steps,
            **self.scores.state_dict(),
            "record": self.record,
            "final_masks": self.final_masks,
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.estimation_steps = state["estimation_steps"]
        self.record = state["record"]
        self.final_masks = copied_to(state["final_masks"], "cpu")  # host copies, as ``prune`` keeps them
        if self.record is not None:  # pruned before the checkpoint: prune the fresh model the same way
            self._drop_masks(model)
            apply_pruning(model.backbone, self.blocks, self.record)
            return
        self.scores.load_state_dict(state, model)

    def restore(self, model: nn.Module, run_dir: Path) -> None:
        path = run_dir / PRUNING_FILE
        if not path.exists():
            raise ConfigError(f"{run_dir}: no {PRUNING_FILE}; the run ended before Light-PEFT pruned")
        self._drop_masks(model)
        self.record = json.loads(path.read_text())
        apply_pruning(model.backbone, self.blocks, self.record)

    # -- export and benchmarks ----------------------------------------------------------------------
    def merged_structure(self) -> dict[str, Any] | None:
        """The kept heads and FFN channels per block (``blocks.structure.keep_structure``'s record)."""
        if self.record is None:
            return None
        return {"heads": self.record["heads"], "ffn_channels": self.record["ffn_channels"]}

    def bench_state(self, name: str, state: TrainState, step: Callable[[], None]) -> str:
        """``pruned``: trained on the benchmark's batch until pruned (after the estimation steps);
        ``scoring``: until the next step is in the estimation's second half, where the PEFT module and
        rank scores are accumulated on top of the masks (the costliest estimation step)."""
        if name == "pruned":
            while self.record is None:
                step()
            return kept_modules_note(self.record)
        if name != "scoring":
            return super().bench_state(name, state, step)
        step()  # the first step fixes estimation_steps
        while self.masks is not None and not self._in_second_half(state.step + 1):
            step()
        if self.masks is None:
            raise ConfigError("light_peft @scoring: the estimation ended before its second half")
        return f"scoring steps {state.step + 1}-{self.estimation_steps}"
