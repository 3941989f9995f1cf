"""Light-PEFT's PEFT importance during estimation: per module ||ΔW x|| / ||W x||, per unit (rank) the
first-order Taylor score; the formulas live in ``blocks/importance.py``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftlab import distributed
from peftlab.blocks.importance import output_change_sums, rank_taylor_scores
from peftlab.blocks.params import copied_to, model_device
from peftlab.blocks.protocol import LowRankLayer


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
        device = next(layers[names[0]].parameters()).device if names else torch.device("cpu")
        sums = torch.tensor([float(self.module_sums.get(n, 0)) for n in names], device=device)
        sums = distributed.all_reduce_mean(sums).tolist()  # on the device: NCCL takes only CUDA tensors
        modules = {n: v / steps for n, v in zip(names, sums, strict=True)}
        ranks = {  # on the host: pruning reads them with .tolist()
            n: (self.rank_sums[n] / steps).cpu()
            if n in self.rank_sums
            else torch.zeros(layers[n].units, device="cpu")
            for n in names
        }
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
        device = model_device(model)
        self.module_sums = copied_to(state["module_sums"], device)
        self.rank_sums = copied_to(state["rank_sums"], device)
        self.recorded_steps = state["recorded_steps"]
        if state["importance_on"]:
            self.start_module_scores(model)
