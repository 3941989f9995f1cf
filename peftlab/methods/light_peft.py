"""Light-PEFT (Gu et al. 2024): early pruning of the foundation model and of the PEFT modules, in one run.

1. Estimation (the first ``estimation_ratio`` of the steps): trainable masks on head units and FFN
   channels (init 1, L1 penalty ``l1_coef`` in the loss, LR = schedule LR x ``*_mask_lr_coef``) train
   with the PEFT module (``peft``: a ``lora`` or ``adapter`` config). Over the second half of these
   steps each PEFT module's importance ||ΔW x|| / ||W x|| (mean over non-pad tokens) and each rank's
   first-order Taylor score |mean_in(A ⊙ dA)| + |mean_out(B ⊙ dB)| are averaged.
2. Pruning, then normal training: the lowest-mask heads of every layer (``head_ratio``), the
   lowest-mask FFN channels over all layers (``ffn_ratio``), the least important PEFT modules
   (``module_ratio``) and ranks over all kept modules (``rank_ratio``) are removed physically (weights
   sliced, head counts updated, masks dropped); the loop rebuilds the optimizer and trains on.

Counts, not quantile thresholds, decide what goes (floor(ratio x n) units), so the ratios hold exactly.
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
from safetensors.torch import save_file
from torch import nn

from peftlab import distributed
from peftlab.blocks.adapter import BottleneckAdapter
from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.masks import StructureMasks
from peftlab.blocks.params import count_parameters
from peftlab.blocks.structure import blocks, prune_channels, prune_heads
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, TrainState, build_method, register_method
from peftlab.train import efficiency
from peftlab.train.optim import default_param_groups

log = logging.getLogger(__name__)

MASKS = "light_peft_masks"  # the masks' module name inside the model while they exist
PRUNING_FILE = "light_peft_pruning.json"
PEFT_NAMES = ("lora", "adapter")
PeftLayer = LowRankLinear | BottleneckAdapter


def default_peft() -> dict[str, Any]:
    """LoRA as the authors' GLUE scripts run it: r 8, alpha 16, dropout 0.05, every linear layer."""
    return {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}


@dataclass
class LightPeftConfig(MethodConfig):
    peft: dict[str, Any] = field(default_factory=default_peft)
    estimation_ratio: float = 0.1  # fraction of the training steps spent estimating
    l1_coef: float = 1e-4
    head_mask_lr_coef: float = 1.0  # mask LR = schedule LR x coef (the authors' scripts: 1)
    ffn_mask_lr_coef: float = 1.0
    head_ratio: float = 1 / 3  # of each layer's head units
    ffn_ratio: float = 1 / 3  # of all FFN channels
    module_ratio: float = 0.75  # of the PEFT modules
    rank_ratio: float = 0.5  # of the ranks of the kept modules

    def __post_init__(self) -> None:
        if self.peft.get("name") not in PEFT_NAMES:
            raise ConfigError(
                f"light_peft peft.name={self.peft.get('name')!r}; allowed: {', '.join(PEFT_NAMES)}"
            )
        if not 0 < self.estimation_ratio < 1:
            raise ConfigError(f"light_peft estimation_ratio={self.estimation_ratio}; allowed: 0 < ratio < 1")
        for key in ("head_ratio", "ffn_ratio", "module_ratio", "rank_ratio"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"light_peft {key}={getattr(self, key)}; allowed: 0 <= ratio < 1")


def peft_layers(model: nn.Module) -> list[tuple[str, PeftLayer]]:
    return [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, PeftLayer)]


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest scores."""
    return (
        torch.topk(scores, count, largest=False).indices if count else scores.new_zeros(0, dtype=torch.long)
    )


def keep_highest(scores: list[torch.Tensor], ratio: float, never_empty: bool) -> list[torch.Tensor]:
    """Over all groups together, drop the floor(ratio x total) lowest scores; per group, the indices kept.
    ``never_empty``: a group that would lose everything keeps its best entry."""
    flat = torch.cat(scores) if scores else torch.zeros(0)
    dropped = torch.zeros(flat.numel(), dtype=torch.bool)
    dropped[lowest(flat, math.floor(ratio * flat.numel()))] = True
    kept, offset = [], 0
    for group in scores:
        keep = (~dropped[offset : offset + group.numel()]).nonzero().flatten()
        if never_empty and keep.numel() == 0:
            keep = group.argmax().view(1)
        kept.append(keep)
        offset += group.numel()
    return kept


def complement(n: int, drop: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[drop.cpu()] = False
    return keep.nonzero().flatten()


@register_method("light_peft")
class LightPeft(Method):
    config_class = LightPeftConfig
    output_files = (PRUNING_FILE, f"{MASKS}.safetensors")
    config: LightPeftConfig

    def __init__(self, config: LightPeftConfig) -> None:
        super().__init__(config)
        self.inner = build_method(OmegaConf.create(config.peft))
        self.masks: StructureMasks | None = None
        self.estimation_steps = 0
        self.module_sums: dict[str, torch.Tensor] = {}
        self.rank_sums: dict[str, torch.Tensor] = {}
        self.recorded_steps = 0
        self.record: dict[str, Any] | None = None  # what was pruned (saved as PRUNING_FILE)
        self.final_masks: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._attention_mask: torch.Tensor | None = None
        self.importance_on = False  # module-importance hooks are recording (second half of estimation)

    @property
    def estimating(self) -> bool:
        return self.masks is not None

    # -- set-up: the PEFT module plus masks ---------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        self.inner.attach(model)
        self.blocks = blocks(model.backbone)
        self.masks = StructureMasks(model.backbone, self.blocks)
        model.add_module(MASKS, self.masks)  # part of the model while estimating: moved, counted, trained
        self.masks.apply_to(model.backbone)
        self._hooks.append(model.register_forward_pre_hook(self._keep_attention_mask, with_kwargs=True))

    def _keep_attention_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._attention_mask = kwargs.get("attention_mask")

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
        return self.estimating and self.estimation_steps // 2 < step <= self.estimation_steps

    def after_backward(self, state: TrainState) -> None:
        if not self.estimation_steps:
            if state.total_steps < 3:
                raise ConfigError(
                    f"light_peft needs at least 3 training steps, this run has {state.total_steps}"
                )
            self.estimation_steps = max(2, math.ceil(self.config.estimation_ratio * state.total_steps))
            self.estimation_steps = min(self.estimation_steps, state.total_steps - 1)
        if not self._in_second_half(state.step + 1):
            return
        with torch.no_grad():
            for name, layer in peft_layers(state.model):
                a, b = layer.low_rank_pair()
                if a.grad is None or b.grad is None:
                    continue
                score = (a * a.grad).mean(1).abs() + (b * b.grad).mean(0).abs()
                score = torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)
                self.rank_sums[name] = self.rank_sums.get(name, 0) + score
        self.recorded_steps += 1

    def after_step(self, state: TrainState) -> None:
        if not self.estimating:
            return
        if state.step == self.estimation_steps // 2:  # the next forward starts the second half
            self._start_importance(state.model)
        if state.step == self.estimation_steps:
            self.prune(state.model)
            state.params_changed()

    def _start_importance(self, model: nn.Module) -> None:
        for name, layer in peft_layers(model):
            self._hooks.append(layer.register_forward_hook(self._module_importance(name)))
        self.importance_on = True

    def _module_importance(self, name: str):
        def hook(module: PeftLayer, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not module.training:
                return
            with torch.no_grad():
                base = module.base_layer(args[0])
                ratio = (output - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-12)
                mask = self._attention_mask
                if mask is not None and mask.shape == ratio.shape:
                    value = (ratio * mask).sum() / mask.sum().clamp_min(1)
                else:
                    value = ratio.mean()
                self.module_sums[name] = self.module_sums.get(name, 0) + torch.nan_to_num(value, nan=0.0)

        return hook

    # -- pruning ------------------------------------------------------------------------------------
    def prune(self, model: nn.Module) -> None:
        """Choose what goes from the masks and the averaged PEFT scores, then remove it physically."""
        cfg, masks = self.config, self.masks
        assert masks is not None
        before = count_parameters(model) - masks.head.numel() - masks.ffn.numel()
        head, ffn = masks.head.detach().cpu(), masks.ffn.detach().cpu()
        heads = [complement(len(row), lowest(row, math.floor(cfg.head_ratio * len(row)))) for row in head]
        channels = keep_highest(list(ffn), cfg.ffn_ratio, never_empty=True)

        layers = dict(peft_layers(model))
        steps = max(self.recorded_steps, 1)
        sums = torch.tensor([float(self.module_sums.get(n, 0)) for n in sorted(layers)])
        sums = distributed.all_reduce_mean(sums)  # activations differ between ranks' shares of a batch
        module_scores = {n: float(v) / steps for n, v in zip(sorted(layers), sums, strict=True)}
        names = list(module_scores)
        gone = lowest(torch.tensor(list(module_scores.values())), math.floor(cfg.module_ratio * len(names)))
        removed = {names[i] for i in gone.tolist()}
        kept = [n for n in names if n not in removed]
        rank_scores = [(self.rank_sums.get(n, torch.zeros(layers[n].rank)) / steps).cpu() for n in kept]
        ranks = dict(zip(kept, keep_highest(rank_scores, cfg.rank_ratio, never_empty=False), strict=True))
        self.final_masks = {"head": head, "ffn": ffn}
        self.record = {
            "heads": {str(i): v.tolist() for i, v in enumerate(heads)},
            "ffn_channels": {str(i): v.tolist() for i, v in enumerate(channels)},
            # a module whose every rank went is removed too
            "removed_modules": sorted(set(names) - {n for n, r in ranks.items() if r.numel()}),
            "ranks": {n: r.tolist() for n, r in ranks.items() if r.numel()},
            "module_scores": module_scores,
            "head_units_per_layer": head.shape[1],
            "ffn_channels_per_layer": ffn.shape[1],
        }
        distributed.assert_ranks_agree(
            "Light-PEFT pruning", {k: v for k, v in self.record.items() if k != "module_scores"}
        )
        self._drop_masks(model)
        self._apply(model, self.record)
        after = count_parameters(model)
        self.record.update({"step": self.estimation_steps, "params_before": before, "params_after": after})
        log.info(
            "light_peft: pruned at step %d: heads %d -> %d, FFN channels %d -> %d, PEFT modules %d -> %d, "
            "params %d -> %d",
            self.estimation_steps,
            head.numel(),
            sum(len(v) for v in heads),
            ffn.numel(),
            sum(len(v) for v in channels),
            len(names),
            len(self.record["ranks"]),
            before,
            after,
        )

    def _drop_masks(self, model: nn.Module) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self.masks is not None:
            self.masks.remove()
            delattr(model, MASKS)
            self.masks = None

    def _apply(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Remove heads, channels, PEFT modules and ranks as ``record`` says (training or reloading)."""
        backbone = model.backbone
        for i, block in enumerate(self.blocks):
            prune_heads(backbone, block, torch.tensor(record["heads"][str(i)], dtype=torch.long))
            prune_channels(backbone, block, torch.tensor(record["ffn_channels"][str(i)], dtype=torch.long))
        for name in record["removed_modules"]:
            backbone.set_submodule(name, backbone.get_submodule(name).base_layer)
        for name, keep in record["ranks"].items():
            backbone.get_submodule(name).keep_ranks(torch.tensor(keep, dtype=torch.long))

    # -- reporting, saving, reloading ---------------------------------------------------------------
    def report(self, state: TrainState, step_times: list[float], out_dir: Path) -> dict[str, Any]:
        if self.record is None:
            return {"pruned": False}
        (out_dir / PRUNING_FILE).write_text(json.dumps(self.record, indent=1) + "\n")
        save_file(
            {k: v.contiguous() for k, v in self.final_masks.items()}, str(out_dir / f"{MASKS}.safetensors")
        )
        k = self.record["step"]
        before, after = step_times[1:k], step_times[k + 1 :]  # the first step and the pruning step left out
        return {
            "pruned": True,
            "pruned_at_step": k,
            "heads_kept": sum(len(v) for v in self.record["heads"].values()),
            "heads_total": self.record["head_units_per_layer"] * len(self.record["heads"]),
            "ffn_channels_kept": sum(len(v) for v in self.record["ffn_channels"].values()),
            "ffn_channels_total": self.record["ffn_channels_per_layer"] * len(self.record["ffn_channels"]),
            "peft_modules_removed": len(self.record["removed_modules"]),
            "peft_modules_kept": len(self.record["ranks"]),
            "ranks_kept": sum(len(v) for v in self.record["ranks"].values()),
            "params_before": self.record["params_before"],
            "params_after": self.record["params_after"],
            "median_step_s_estimating": efficiency.median(before),
            "median_step_s_pruned": efficiency.median(after),
        }

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained PEFT tensors and head, in their pruned shapes (the masks are not part of it)."""
        return {
            n: p.detach()
            for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith(MASKS + ".")
        }

    def state_dict(self) -> dict[str, Any]:
        masks = self.masks
        return {
            "estimation_steps": self.estimation_steps,
            "recorded_steps": self.recorded_steps,
            "module_sums": dict(self.module_sums),
            "rank_sums": dict(self.rank_sums),
            "importance_on": self.importance_on,
            "masks": None
            if masks is None
            else {"head": masks.head.detach().clone(), "ffn": masks.ffn.detach().clone()},
            "record": self.record,
            "final_masks": self.final_masks,
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.estimation_steps, self.recorded_steps = state["estimation_steps"], state["recorded_steps"]
        self.module_sums, self.rank_sums = state["module_sums"], state["rank_sums"]
        self.record, self.final_masks = state["record"], state["final_masks"]
        if self.record is not None:  # pruned before the checkpoint: prune the fresh model the same way
            self._drop_masks(model)
            self._apply(model, self.record)
            return
        assert self.masks is not None
        with torch.no_grad():
            self.masks.head.copy_(state["masks"]["head"])
            self.masks.ffn.copy_(state["masks"]["ffn"])
        if state["importance_on"]:
            self._start_importance(model)

    def restore(self, model: nn.Module, run_dir: Path) -> None:
        path = run_dir / PRUNING_FILE
        if not path.exists():
            raise ConfigError(f"{run_dir}: no {PRUNING_FILE}; the run ended before Light-PEFT pruned")
        self._drop_masks(model)
        self.record = json.loads(path.read_text())
        self._apply(model, self.record)
