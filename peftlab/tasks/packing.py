"""``task.packing=true``: the examples of a training batch laid end to end in rows of at most
``schedule.max_seq_length`` tokens (a longer example: a row of its own, not cut), each sequence with
its own ``position_ids`` restarting at 0, so that a decoder whose attention isolates such rows (Llama
family, SDPA or eager, with no attention mask) computes each example's loss as if it were alone.

The sampler is unchanged (``schedule.batch_size`` examples per step, the same seeded order, so resume
is exact and an epoch has as many steps), only their layout changes: the step's loss is the same mean
over the same target tokens. Each sequence's first label is -100, so no position predicts across a
boundary. A row's tail padding continues the last sequence's positions (it comes after every real
token, and its labels are -100); ``attention_mask`` stays in the batch for token counts only: the
model drops it.
"""

from __future__ import annotations

import os

import torch

from peftlab.errors import ConfigError
from peftlab.models.lm import IGNORE_INDEX

# model types whose packed rows give the unpacked loss (tests/test_packing.py checks each)
PACKABLE_TYPES = ("llama",)
PACKABLE_ATTENTION = ("sdpa", "eager")


def check_packable(config, model_name: str | None = None) -> None:
    """Refuses ``task.packing`` on a model whose attention does not isolate packed sequences, and under
    torchrun: the packed loss is checked against the padded one in one process only."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ConfigError(
            f"task.packing=true under torchrun (WORLD_SIZE={world}) is not supported: packing is checked "
            "in one process only; use task.group_by_length=true"
        )
    model_type = getattr(config, "model_type", None)
    model_name = f"{model_name} ({model_type})" if model_name else f"type {model_type}"
    if getattr(config, "is_encoder_decoder", False) or model_type not in PACKABLE_TYPES:
        raise ConfigError(
            f"task.packing=true: model {model_name} does not isolate packed sequences; "
            f"allowed model types: {', '.join(PACKABLE_TYPES)} (else task.group_by_length=true)"
        )
    attention = getattr(config, "_attn_implementation", None)
    if attention is not None and attention not in PACKABLE_ATTENTION:
        raise ConfigError(
            f"task.packing=true: model {model_name} uses attention {attention!r}; "
            f"allowed: {', '.join(PACKABLE_ATTENTION)}"
        )


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of ``lengths`` grouped into rows holding at most ``capacity``
    tokens. Ties keep batch order,
    so the layout is a function of the batch alone."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def packed_batch(
    inputs: list[list[int]], labels: list[list[int]], capacity: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``labels``, ``position_ids`` and ``attention_mask`` (real tokens; not given to the
    model) of sequences packed into rows of ``capacity`` tokens. Nothing is cut (the unpacked loss is
    kept): a longer sequence fills a row alone, and the batch is as wide as it."""
    labels = [[IGNORE_INDEX, *row[1:]] for row in labels]
    rows = pack_rows([len(row) for row in inputs], max(capacity, *map(len, inputs)))
    width = max(sum(len(inputs[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            end = start + len(inputs[i])
            ids[r, start:end] = torch.tensor(inputs[i])
            targets[r, start:end] = torch.tensor(labels[i])
            positions[r, start:end] = torch.arange(end - start)
            start = end
        mask[r, :start] = 1
        last = int(positions[r, start - 1]) + 1
        positions[r, start:] = torch.arange(last, last + width - start)
    return {"input_ids": ids, "labels": targets, "position_ids": positions, "attention_mask": mask}
