"""Data-parallel training under ``torchrun``: one process per device, gloo on CPU; DDP (a replica of
the model per process) or FSDP2 (``distributed.strategy=fsdp``: ``fully_shard``, each process holds a
shard of every parameter, gradient and Adam moment, and gathers a block's weights for its forward).

Every rank reads the same (seeded) global batches and trains on its contiguous share of each, so N
ranks see exactly the examples one process would see in one step, and DDP's averaged gradient is the
single-process gradient (given a batch size divisible by N). Only rank 0 writes files, logs metrics
and talks to W&B. Decisions that methods take from gradients or activations (which rows SPSFT trains,
which PMs AFLoRA freezes, what Light-PEFT prunes) are checked to be identical on every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from peftlab.errors import ConfigError

log = logging.getLogger(__name__)


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1); returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if not enabled():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index is not None and device != local:
            log.warning("model.device=%s under torchrun: this rank uses %s (LOCAL_RANK)", device, local)
        device = local
        torch.cuda.set_device(device)
    return device


def shutdown() -> None:
    """Wait for every rank, then leave the process group: a rank that exits while gloo's threads still
    run aborts ("terminate called without an active exception")."""
    if enabled():
        dist.barrier()
        dist.destroy_process_group()


def check_batch_size(batch_size: int) -> None:
    if batch_size % world_size():
        raise ConfigError(
            f"schedule.batch_size={batch_size} is not divisible by the {world_size()} processes; "
            f"allowed: a multiple of {world_size()}"
        )


def shard(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's contiguous share of a global batch (all of it in one process)."""
    if world_size() == 1:
        return batch
    return {k: v.tensor_split(world_size())[rank()] for k, v in batch.items()}


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not enabled():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


STRATEGIES = ("ddp", "fsdp")


def fully_shard_model(model: nn.Module) -> nn.Module:
    """FSDP2 over ``model`` in place: one shard group per transformer block (transformers'
    ``_no_split_modules``), one for each part the model calls on its own (``backbone``, ``lm_head``,
    ``head``: generation calls them directly), and the rest at the root."""
    from torch.distributed.fsdp import fully_shard

    backbone = getattr(model, "backbone", None)
    block_names = set(getattr(backbone, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in block_names:
            fully_shard(module)
    for name in ("backbone", "lm_head", "head"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module) and any(True for _ in part.parameters()):
            fully_shard(part)
    fully_shard(model)
    return model


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Within: every FSDP group of ``model`` gathered once and kept whole, so a decoding loop's forwards
    all-gather nothing (each would gather every block again per token); resharded on exit, and each
    group back to FSDP's default (the root keeps its weights after forward, the others reshard). Holds
    the whole model on each rank meanwhile. Nothing for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for group in groups:
        group.set_reshard_after_forward(False, recurse=False)
        group.unshard()
    try:
        yield
    finally:
        for group in groups:
            group.reshard()
            group.set_reshard_after_forward(group is not model, recurse=False)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within: a backward that all-reduces (DDP) or reduce-scatters (FSDP) gradients only if ``enabled``
    (off for the non-final micro-batches of an accumulated step)."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sharded (FSDP) tensors gathered whole, on every rank (a collective: every rank calls it, in the same
    order); others as they are."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in tensors.items()}


def assert_ranks_agree(what: str, value: Any) -> None:
    """Raise if ``value`` (anything JSON can write) differs between ranks."""
    if not enabled():
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    digests: list[str | None] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on {what}: {digests}")
