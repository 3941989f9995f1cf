"""Gradient accumulation: one optimizer step over ``schedule.batch_size`` examples, computed in
micro-batches of ``schedule.micro_batch_size``.

Each micro-batch's loss (a mean over its own targets) is weighted by its share of the targets of the
whole effective batch: examples for classification and regression, target tokens (labels != -100) for
language modelling. The summed gradients are then those of one batch of ``batch_size``, whatever the
split, and with uneven target lengths too. Under data parallelism the share is of the global batch
(every rank reads it), times the number of ranks, because DDP averages the ranks' gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab import distributed


@dataclass
class MicroBatch:
    """One forward/backward of a step: its tensors and the weight of its mean loss."""

    batch: dict[str, torch.Tensor]
    weight: float


def count_targets(model: nn.Module, labels: torch.Tensor) -> int:
    """What a loss averages over: the model's own count (LM: target tokens) or one per example."""
    counter = getattr(model, "count_targets", None)
    return int(counter(labels)) if counter is not None else len(labels)


def split(
    batch: dict[str, torch.Tensor],
    micro_batch_size: int | None,
    model: nn.Module,
    total_targets: int | None = None,
) -> list[MicroBatch]:
    """This rank's share of a batch cut into micro-batches of ``micro_batch_size`` (null: one), each with
    its loss weight. ``total_targets``: the targets of the global batch (default: this share's, times the
    number of ranks)."""
    size = micro_batch_size or len(batch["labels"])
    columns = [v.split(size) for v in batch.values()]
    parts = [dict(zip(batch, values, strict=True)) for values in zip(*columns, strict=True)]
    counts = [count_targets(model, part["labels"]) for part in parts]
    total = total_targets if total_targets is not None else sum(counts) * distributed.world_size()
    world = distributed.world_size()
    return [
        MicroBatch(part, count / max(total, 1) * world)
        for part, count in zip(parts, counts, strict=True)
        if count  # a micro-batch without a target adds nothing (and its mean loss is 0/0)
    ]
