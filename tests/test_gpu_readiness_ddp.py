"""DDP and the free-memory check without a GPU. Two gloo processes count what DDP broadcasts
(``dist._broadcast_coalesced``, DDP's only broadcast): the module once at set-up, then nothing, neither
the frozen buffers (ELoRA's projections) per step nor the model again at an optimizer rebuild
(AFLoRA freezes, so it rebuilds). The CUDA memory API is mocked for the free-memory check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from peftlab.models import footprint

GIB = 1 << 30

COUNTER = """
import json, os, sys
import torch.distributed as dist
from peftlab.train import trainer

calls, phase = [], ["set-up"]
real_broadcast, real_step = dist._broadcast_coalesced, trainer.Trainer.train_step

def counting(group, tensors, size, src):
    size_bytes = sum(t.numel() * t.element_size() for t in tensors)
    calls.append([phase[0], sys._getframe(1).f_code.co_name, size_bytes])
    return real_broadcast(group, tensors, size, src)

def step(self, *args, **kwargs):
    phase[0] = f"step {self.state.step + 1}"
    return real_step(self, *args, **kwargs)

dist._broadcast_coalesced, trainer.Trainer.train_step = counting, step
import peftlab
print("peftlab from", peftlab.__file__, file=sys.stderr)
from peftlab.cli import main
try:
    main()
finally:
    with open(os.path.join(os.environ["COUNT_DIR"], os.environ["RANK"] + ".json"), "w") as handle:
        json.dump(calls, handle)
"""


@pytest.mark.slow  # torchrun: two processes and a rendezvous
@pytest.mark.parametrize("method", ["elora", "aflora"])
def test_ddp_broadcasts_the_model_once_and_nothing_per_step(tmp_path, method):
    script = tmp_path / "count.py"
    script.write_text(COUNTER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COUNT_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's peftlab
    args = [
        "model=tiny_bert",
        "schedule=quick",
        "schedule.max_steps=12",
        "task.max_train_samples=48",  # 6 steps an epoch: AFLoRA freezes (and rebuilds) within 12
        "task.max_eval_samples=16",
        "progress_bar=false",
        f"method={method}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*command, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"peftlab from {ROOT}" in proc.stderr
    for rank in ("0", "1"):
        calls = json.loads((tmp_path / f"{rank}.json").read_text())
        assert len(calls) == 1 and calls[0][0] == "set-up", calls  # the first wrap's sync only
        assert calls[0][2] > 0


def fake_cuda_memory(monkeypatch, free: int, reserved: int, allocated: int) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)


def test_free_cuda_memory_counts_the_allocators_cached_blocks(monkeypatch):
    """An earlier run of a sweep left 30 GiB cached (reserved, 2 GiB of it still in use): free to us."""
    fake_cuda_memory(monkeypatch, free=10 * GIB, reserved=32 * GIB, allocated=2 * GIB)
    assert footprint.available_memory(torch.device("cuda", 0)) == 40 * GIB
