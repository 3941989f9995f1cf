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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from peftlab import distributed
from peftlab.blocks.importance import output_change_sums, rank_taylor_scores
from peftlab.blocks.masks import StructureMasks
from peftlab.blocks.params import count_parameters, default_param_groups
from peftlab.blocks.protocol import LowRankLayer
from peftlab.blocks.selection import dropped_count, keep_highest, quantile_count
from peftlab.blocks.structure import Block, blocks, prune_channels, prune_heads
from peftlab.blocks.timing import median_step_times_around
from peftlab.errors import ConfigError
from peftlab.methods.base import (
    Method,
    MethodConfig,
    MethodReport,
    TrainState,
    build_method,
    json_bytes,
    register_method,
    safetensors_bytes,
)

log = logging.getLogger(__name__)

MASKS = "light_peft_masks"  # the masks' module name inside the model while they exist
PRUNING_FILE = "light_peft_pruning.json"
PEFT_NAMES = ("lora", "adapter")
HEAD_COUNTS = ("quantile", "floor")


def default_peft() -> dict[str, Any]:
    """LoRA as the authors' GLUE scripts run it: r 8, alpha 16, dropout 0.05, every linear layer."""
    return {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}


@dataclass
class LightPeftConfig(MethodConfig):
    peft: dict[str, Any] = field(default_factory=default_peft)
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


def peft_layers(model: nn.Module) -> list[tuple[str, LowRankLayer]]:
    """The PEFT layers whose modules and ranks Light-PEFT scores (LoRA, adapters), by backbone name."""
    return [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, LowRankLayer)]


class EstimationScores:
    """Light-PEFT's PEFT importance, summed over the recorded estimation steps: per module
    ||ΔW x|| / ||W x|| (forward hooks, training forwards only) and per rank the first-order Taylor score
    (after each backward). Both live in ``blocks/importance.py``."""

    def __init__(self) -> None:
        self.module_sums: dict[str, torch.Tensor] = {}
        self.rank_sums: dict[str, torch.Tensor] = {}
        self.recorded_steps = 0
        self.modules_on = False  # module hooks are recording (second half of estimation)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._attention_mask: torch.Tensor | None = None
        self._step_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # this step's (sum, tokens)

    def watch_inputs(self, model: nn.Module) -> None:
        """Remember each forward's attention mask: module scores average over non-padding tokens."""

        def keep_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._attention_mask = kwargs.get("attention_mask")

        self._hooks.append(model.register_forward_pre_hook(keep_mask, with_kwargs=True))

    def start_module_scores(self, model: nn.Module) -> None:
        for name, layer in peft_layers(model):
            self._hooks.append(layer.register_forward_hook(self._module_hook(name)))
        self.modules_on = True

    def _module_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if module.training:
                with torch.no_grad():
                    sums = output_change_sums(output, module.base_layer(args[0]), self._attention_mask)
                total, count = self._step_sums.get(name, (0, 0))
                self._step_sums[name] = (total + sums[0], count + sums[1])

        return hook

    def add_step(self, model: nn.Module) -> None:
        """Close a step: add its module scores (over all its micro-batches) and its rank scores."""
        for name, (total, count) in self._step_sums.items():
            value = torch.nan_to_num(total / count.clamp_min(1), nan=0.0)
            self.module_sums[name] = self.module_sums.get(name, 0) + value
        self._step_sums.clear()
        self.add_rank_scores(model)

    def add_rank_scores(self, model: nn.Module) -> None:
        for name, layer in peft_layers(model):
            score = rank_taylor_scores(*layer.low_rank_pair())
            if score is not None:
                self.rank_sums[name] = self.rank_sums.get(name, 0) + score
        self.recorded_steps += 1

    def averages(self, layers: dict[str, LowRankLayer]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(module score, rank scores) of every layer, averaged over the recorded steps (module scores
        also over the data-parallel ranks, whose activations differ)."""
        steps = max(self.recorded_steps, 1)
        names = sorted(layers)
        sums = torch.tensor([float(self.module_sums.get(n, 0)) for n in names])
        sums = distributed.all_reduce_mean(sums)
        modules = {n: float(v) / steps for n, v in zip(names, sums, strict=True)}
        ranks = {n: (self.rank_sums.get(n, torch.zeros(layers[n].rank)) / steps).cpu() for n in names}
        return modules, ranks

    def stop(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "module_sums": dict(self.module_sums),
            "rank_sums": dict(self.rank_sums),
            "recorded_steps": self.recorded_steps,
            "importance_on": self.modules_on,
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.module_sums, self.rank_sums = state["module_sums"], state["rank_sums"]
        self.recorded_steps = state["recorded_steps"]
        if state["importance_on"]:
            self.start_module_scores(model)


def choose_pruning(
    cfg: LightPeftConfig,
    masks: StructureMasks,
    module_scores: dict[str, float],
    rank_scores: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """What goes: the lowest-mask heads of each layer, the lowest-mask FFN channels over all layers, the
    least important PEFT modules, then the lowest ranks over all kept modules (a module left with no
    rank goes too). Counts are floor(ratio x n), so the ratios hold exactly."""
    head, ffn = masks.head.detach().cpu(), masks.ffn.detach().cpu()
    count = quantile_count if cfg.head_count == "quantile" else dropped_count
    heads = keep_highest(list(head), [len(r) - count(len(r), cfg.head_ratio) for r in head])
    channels = keep_highest(
        list(ffn), [ffn.numel() - dropped_count(ffn.numel(), cfg.ffn_ratio)], scope="global", never_empty=True
    )
    names = list(module_scores)
    (modules_kept,) = keep_highest(
        [torch.tensor(list(module_scores.values()))],
        [len(names) - dropped_count(len(names), cfg.module_ratio)],
    )
    kept = [names[i] for i in modules_kept.tolist()]
    total_ranks = sum(rank_scores[n].numel() for n in kept)
    ranks = keep_highest(
        [rank_scores[n] for n in kept],
        [total_ranks - dropped_count(total_ranks, cfg.rank_ratio)],
        scope="global",
    )
    ranks_kept = {n: r.tolist() for n, r in zip(kept, ranks, strict=True) if r.numel()}
    return {
        "heads": {str(i): v.tolist() for i, v in enumerate(heads)},
        "ffn_channels": {str(i): v.tolist() for i, v in enumerate(channels)},
        "removed_modules": sorted(set(names) - set(ranks_kept)),
        "ranks": ranks_kept,
        "module_scores": module_scores,
        "head_units_per_layer": head.shape[1],
        "ffn_channels_per_layer": ffn.shape[1],
    }


def prune_structure(backbone: nn.Module, structure: list[Block], record: dict[str, Any]) -> None:
    """Keep only the heads and FFN channels ``record`` lists per block (also a merged export's reload)."""
    for i, block in enumerate(structure):
        prune_heads(backbone, block, torch.tensor(record["heads"][str(i)], dtype=torch.long))
        prune_channels(backbone, block, torch.tensor(record["ffn_channels"][str(i)], dtype=torch.long))


def apply_pruning(backbone: nn.Module, structure: list[Block], record: dict[str, Any]) -> None:
    """Remove heads, channels, PEFT modules and ranks as ``record`` says (training or reloading)."""
    prune_structure(backbone, structure, record)
    for name in record["removed_modules"]:
        backbone.set_submodule(name, backbone.get_submodule(name).removed())
    for name, keep in record["ranks"].items():
        backbone.get_submodule(name).keep_ranks(torch.tensor(keep, dtype=torch.long))


def pruning_report(record: dict[str, Any] | None, step_times: list[float]) -> dict[str, Any]:
    """results.json's summary of what was pruned, and the step time before and after."""
    if record is None:
        return {"pruned": False}
    k = record["step"]
    before, after = median_step_times_around(step_times, k)

    def count(key: str) -> int:
        return sum(len(v) for v in record[key].values())

    return {
        "pruned": True,
        "pruned_at_step": k,
        "heads_kept": count("heads"),
        "heads_total": record["head_units_per_layer"] * len(record["heads"]),
        "ffn_channels_kept": count("ffn_channels"),
        "ffn_channels_total": record["ffn_channels_per_layer"] * len(record["ffn_channels"]),
        "peft_modules_removed": len(record["removed_modules"]),
        "peft_modules_kept": len(record["ranks"]),
        "ranks_kept": count("ranks"),
        "params_before": record["params_before"],
        "params_after": record["params_after"],
        "median_step_s_estimating": before,
        "median_step_s_pruned": after,
    }


@register_method("light_peft")
class LightPeft(Method):
    """Estimation (masks + PEFT scores), pruning at ``estimation_steps``, then training the smaller model."""

    config_class = LightPeftConfig
    output_files = (PRUNING_FILE, f"{MASKS}.safetensors")
    config: LightPeftConfig

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
        self.record, self.final_masks = state["record"], state["final_masks"]
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
