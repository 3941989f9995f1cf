"""Efficiency numbers every run records: step time, peak memory, FLOPs per step."""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# fp32 matmul throughput measured on the 2-core CPU machines (shared/ENVIRONMENT.md).
CPU_PEAK_GFLOPS = 440.0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmul-like ops that ``fn`` runs (forward and backward), by torch's counter."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
