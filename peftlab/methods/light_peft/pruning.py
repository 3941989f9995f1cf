"""Light-PEFT's pruning: what goes (from the masks and the PEFT scores), removing it physically, and the
summary of what went. The record ``choose_pruning`` returns is saved as ``light_peft_pruning.json``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftlab.blocks.masks import StructureMasks
from peftlab.blocks.selection import dropped_count, keep_highest, quantile_count
from peftlab.blocks.structure import Block, keep_structure, prunable
from peftlab.blocks.timing import median_step_times_around
from peftlab.methods.light_peft.config import LightPeftConfig


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
        [torch.tensor(list(module_scores.values()), device="cpu")],  # host: read with .tolist()
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


def apply_pruning(backbone: nn.Module, structure: list[Block], record: dict[str, Any]) -> None:
    """Remove heads, channels, PEFT modules and ranks as ``record`` says (training or reloading)."""
    keep_structure(backbone, record, structure)
    for name in record["removed_modules"]:
        backbone.set_submodule(name, prunable(backbone.get_submodule(name), name).removed())
    for name, keep in record["ranks"].items():
        prunable(backbone.get_submodule(name), name).keep_units(
            torch.tensor(keep, dtype=torch.long, device="cpu")
        )


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
