"""The benchmark's CUDA memory is each row's own: with CUDA's memory API replaced by a count of the bytes
of live tensor storages (a ``TorchDispatchMode`` sees every storage made, a finalizer every one freed),
``run_rows`` over several rows gives every row the inference peak, train-step memory and inference memory
that measuring that row alone gives, though the earlier rows' weights and Adam state stay resident."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from peftlab.reporting import benchmark
from peftlab.reporting.benchmark import BenchSettings, run_rows


class LiveBytes(TorchDispatchMode):
    """Bytes of the live tensor storages made while active, and their peak (``reset_peak``: peak = now)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)  # a storage's Python object lives as long as the storage
        if key in self._seen:
            return
        self._seen.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def reset_peak(self, *args) -> None:
        self.peak = self.live


@pytest.fixture
def fake_cuda_memory(monkeypatch):
    counter = LiveBytes()
    monkeypatch.setattr(benchmark, "measures_cuda_memory", lambda device: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: counter.live)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: counter.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", counter.reset_peak)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    with counter:
        yield counter


SETTINGS = BenchSettings(
    model="tiny_bert",
    batch_size=4,
    seq_len=16,
    steps=1,
    rounds=1,
    warmup=1,
    flops=False,
    inference=True,
    overrides=["model.dropout=0"],
)
SPECS = [
    "fft method=fft",
    "lora method=lora",
    "spsft method=spsft method.importance_batches=1",
    "lora_bf16 method=lora model.dtype=bfloat16",  # its CUDA peaks come from forwards in its autocast
]


def memory(row) -> tuple[int, int, int]:
    return row.inference_peak, row.memory_bytes, row.infer_memory_bytes


def test_each_rows_memory_is_what_it_measures_alone(tmp_path, fake_cuda_memory):
    def one_at_a_time(name: str) -> list[tuple[int, int, int]]:
        measured = []
        for i, spec in enumerate(SPECS):
            (row,) = run_rows([spec], SETTINGS, tmp_path / f"{name}{i}")
            measured.append(memory(row))
            row.release()
        return measured

    one_at_a_time("warm-up")  # what torch and transformers allocate once per process, before both
    rows = run_rows(SPECS, SETTINGS, tmp_path / "together")
    together = [memory(r) for r in rows]
    for row in rows:
        row.release()
    del rows, row
    alone = one_at_a_time("alone")
    assert together == alone
    fft, lora, _, lora_bf16 = alone
    assert lora[0] > 0 and lora[1] > 0 and lora[2] > 0
    assert fft[1] > lora[1]  # full fine-tuning's gradients and Adam state: the counter sees them
    assert lora_bf16[0] < lora[0]  # bf16 weights
