"""Every RNG state a step depends on (torch, CUDA, Python, NumPy), for exact resume, as tensors and plain
Python values only (checkpoints load with ``weights_only=True``).

A checkpoint holds one state per process (``gathered_rng_state``), each with the CUDA state of that
process's own device only: under torchrun rank r restores what rank r saved, and a resume that sees
fewer GPUs than the run that saved it still loads (with a warning that it is not bit-exact).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from peftlab import distributed

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's RNG states; CUDA: the generator of its current device (None without CUDA)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }


def gathered_rng_state() -> list[dict[str, Any]]:
    """Every rank's ``rng_state``, by rank: a collective under torchrun (every rank calls it, so that
    rank 0 can write all of them into its checkpoint)."""
    own = rng_state()
    if not distributed.enabled():
        return [own]
    states: list[Any] = [None] * distributed.world_size()
    torch.distributed.all_gather_object(states, own)
    return states


def _numpy_state() -> dict[str, Any]:
    """NumPy's legacy RNG state with its key as a tensor: a checkpoint then holds only tensors and plain
    Python values, which ``torch.load(weights_only=True)`` reads without running any code."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_rng_state(saved: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Restore this rank's saved state (``gathered_rng_state``; a single state: a one-process save)."""
    states = saved if isinstance(saved, list) else [saved]
    rank, world = distributed.rank(), distributed.world_size()
    if len(states) != world:
        log.warning(
            "resume: the checkpoint holds the RNG states of %d process(es), this run has %d: rank %d "
            "restores rank %d's; random numbers (dropout) differ from the uninterrupted run, so the "
            "resume is not bit-exact",
            len(states),
            world,
            rank,
            min(rank, len(states) - 1),
        )
    state = states[min(rank, len(states) - 1)]
    torch.set_rng_state(state["torch"])
    _set_cuda_state(state["cuda"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))


def _set_cuda_state(cuda: torch.Tensor | list[torch.Tensor] | None) -> None:
    """The current device's generator from ``cuda``: one device's state, or (a save of every visible
    device's) a list indexed by device, of which this device's entry."""
    if cuda is None:
        return
    if not torch.cuda.is_available():
        log.warning("resume: the checkpoint holds a CUDA RNG state but CUDA is not available; not restored")
        return
    if isinstance(cuda, list):
        index = torch.cuda.current_device()
        if index >= len(cuda):
            log.warning("resume: no CUDA RNG state saved for device %d; not restored (not bit-exact)", index)
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda)
