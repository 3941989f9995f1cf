"""Efficiency numbers every run records: step time, peak memory, FLOPs per step."""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    bmm_flop,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


def tracks_device_memory(device: torch.device) -> bool:
    """CUDA's allocator keeps a peak that can be reset; a CPU process has only its peak RSS."""
    return device.type == "cuda"


def reset_peak_memory(device: torch.device) -> None:
    if tracks_device_memory(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated on GPU, the process's peak RSS on CPU."""
    if tracks_device_memory(device):
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"


@contextlib.contextmanager
def evaluation_peak(device: torch.device, peaks: dict[str, int]) -> Iterator[None]:
    """Within: an evaluation, whose peak (a bigger batch, generation's cache) goes to ``peaks["eval"]``
    and not into the training peak (``peaks["train"]``: the peak up to here). CPU: nothing to separate."""
    if not tracks_device_memory(device):
        yield
        return
    peaks["train"] = max(peaks.get("train", 0), torch.cuda.max_memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        peaks["eval"] = max(peaks.get("eval", 0), torch.cuda.max_memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)


def train_peak_memory(device: torch.device, peaks: dict[str, int]) -> tuple[int, str]:
    """The training peak of the run: before, between and after its evaluations."""
    peak, kind = peak_memory(device)
    return (max(peak, peaks.get("train", 0)), kind) if tracks_device_memory(device) else (peak, kind)


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    **kwargs,
) -> int:
    """Gradient of a convolution: the input gradient and the weight gradient each cost what the forward
    did. (torch's own formula counts a grouped convolution's backward as dense: a depthwise convolution
    with 64 channels came out 64x too high.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _sdpa_flops(query_shape, key_shape, value_shape, *_args, **_kwargs) -> int:
    """Fused attention: the two products (scores, weighted values) that eager attention runs as bmm."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *_args, **_kwargs) -> int:
    """Fused attention's gradient: the four products eager attention's backward runs. torch's formula
    adds the scores the kernel recomputes; left out, so the count is the same whichever kernel runs."""
    b, heads, s_q, d_q = query_shape
    s_k = key_shape[2]
    recompute = bmm_flop((b * heads, s_q, d_q), (b * heads, d_q, s_k))
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape) - recompute


SDPA_FORWARD = (
    aten._scaled_dot_product_flash_attention_for_cpu,  # torch counts none on CPU
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
)
SDPA_BACKWARD = (
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter (matmul-like ops only), with the convolution backward counted per group and
    fused attention counted as eager attention is, on every device (CPU's kernel included)."""
    mapping: dict = {aten.convolution_backward: _conv_backward_flops}
    mapping.update(dict.fromkeys(SDPA_FORWARD, _sdpa_flops))
    mapping.update(dict.fromkeys(SDPA_BACKWARD, _sdpa_backward_flops))
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmul-like ops that ``fn`` runs (forward and backward)."""
    counter = flop_counter()
    with counter:
        fn()
    return int(counter.get_total_flops())


def saved_tensor_bytes(model: torch.nn.Module, fn: Callable[[], object]) -> int:
    """Bytes of the storages autograd saves for the backward while ``fn`` runs, the model's own
    parameters and buffers excepted (each storage once). With activation checkpointing only the
    blocks' inputs are saved; what the backward recomputes is not counted."""
    model_ptrs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in model_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """This machine's matmul throughput in ``dtype`` (GFLOP/s, best of ``repeats`` square products of
    ``size``): the ceiling a training step's achieved GFLOP/s is compared with. Its own generator: the
    run's random streams are not touched."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN picks its kernel)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@functools.cache
def measured_ceiling_gflops(dtype: torch.dtype) -> float:
    """This process's matmul ceiling in ``dtype`` (``matmul_gflops``), measured once and kept: the number
    a run's achieved GFLOP/s is a fraction of, without a benchmark per call."""
    return matmul_gflops(dtype, repeats=5)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Step times without a host sync per step. On CUDA a pair of events (recorded on the device's
    stream) brackets each step and their times are read at ``flush`` (one sync, at logging points and
    the summary); on CPU the host clock, which the step's own work already waits for.

    A step is timed from its batch in host memory to the optimizer step done: copy to the device,
    forward, backward, method hooks, optimizer. The time spent waiting for the loader (reading and
    collating the batch) is summed apart (``data_wait_s``), evaluation and checkpoints in neither."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.pending: list[tuple] = []  # (start, end) per step not yet read
        self.data_wait_s = 0.0
        self.steps = 0  # steps this process timed
        self._ready: float | None = None  # when the loop last asked the loader for a batch

    def ready(self) -> None:
        """The loop is about to wait for its next batch."""
        self._ready = time.perf_counter()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> None:
        if self._ready is not None:
            self.data_wait_s += time.perf_counter() - self._ready
            self._ready = None
        self.steps += 1
        self.pending.append((self._mark(), None))

    def stop(self) -> None:
        self.pending[-1] = (self.pending[-1][0], self._mark())

    def flush(self) -> list[float]:
        """Seconds of every step timed since the last flush (waits once for the last one on CUDA); a
        step that never ended (Ctrl-C or an error inside it) is not counted."""
        done, self.pending = [(s, e) for s, e in self.pending if e is not None], []
        if not done:
            return []
        if not self.cuda:
            return [end - start for start, end in done]
        done[-1][1].synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in done]
