"""LoRA in huggingface peft's form: ``LoraConfig`` and ``lora_A`` / ``lora_B`` (/ ``lora_magnitude_vector``)
tensors. rsLoRA and DoRA map onto peft's ``use_rslora`` / ``use_dora``; PiSSA (base = W - s·B0 A0) becomes
the rank-2r LoRA [B, -B0][A; A0] on the original base, as peft's PiSSA conversion writes it."""

from __future__ import annotations

import math
from typing import Any

import torch

from peftlab.blocks.lowrank import LowRankLinear
from peftlab.errors import ConfigError

DORA = "dora"  # the LoRA variant peft calls use_dora


def lora_tensors(layers: list[tuple[str, LowRankLinear]]) -> tuple[dict[str, torch.Tensor], int, float]:
    """peft's LoRA tensors, the rank and the scale (one of each for all layers, as a peft config has)."""
    ranks = {m.rank for _, m in layers}
    scales = {m.scale for _, m in layers}
    if len(ranks) != 1 or len(scales) != 1:
        raise ConfigError(f"layers of different ranks {sorted(ranks)} or scales: use --to merged")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        a, b = (t.detach() for t in layer.low_rank_pair())
        if layer.init_A is not None:
            if layer.variant is not None:
                raise ConfigError("PiSSA with a LoRA variant has no peft form; use --to merged")
            a, b = torch.cat([a, layer.init_A]), torch.cat([b, -layer.init_B], dim=1)
        key = f"base_model.model.{name}"
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
        if layer.variant is not None:
            tensors[f"{key}.lora_magnitude_vector"] = layer.variant.magnitude.detach()
    return tensors, int(a.shape[0]), scales.pop()


def lora_peft_form(
    layers: list[tuple[str, LowRankLinear]], dropout: float, rslora: bool, variant: str | None
) -> tuple[Any, dict[str, torch.Tensor]]:
    """peft's ``LoraConfig`` (its scale is alpha / r, or alpha / sqrt(r) with rsLoRA) and the tensors."""
    from peft import LoraConfig

    if variant not in (None, DORA):
        raise ConfigError(f"LoRA variant {variant!r} has no peft form (peft has: {DORA}); use --to merged")
    tensors, rank, scale = lora_tensors(layers)
    config = LoraConfig(
        r=rank,
        lora_alpha=scale * (math.sqrt(rank) if rslora else rank),
        lora_dropout=dropout,
        use_rslora=rslora,
        use_dora=variant == DORA,
        target_modules=[name for name, _ in layers],
    )
    return config, tensors
