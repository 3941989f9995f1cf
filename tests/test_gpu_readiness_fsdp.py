"""FSDP without a GPU: the memory estimate is per rank (weights, gradients and Adam moments split
between the ranks; a world size mocked at 4), the model is sharded before it is moved (a 1-process
gloo group, with the world size the build sees mocked at 2, records every device move), and greedy
decoding all-gathers each block once, not once per token (two gloo processes count FSDP's
all-gathers)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import ROOT

from peftlab import distributed
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.models import architecture, build_model, footprint
from peftlab.models.footprint import Workload
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

FSDP = ["model=tiny_llama", "task=gsm8k", "distributed.strategy=fsdp", "schedule.batch_size=4"]
BUDGET = ["task.max_prompt_tokens=32", "task.max_target_tokens=16", "task.max_new_tokens=6"]


def test_the_fsdp_estimate_is_per_rank(monkeypatch):
    cfg = compose_config([*FSDP, *BUDGET, "method=fft"])
    empty, _ = build_model(cfg.model, 0, head="lm", device=torch.device("meta"))
    params = sum(p.numel() for p in empty.parameters())
    whole = footprint.estimate(empty, empty.config, Workload.from_config(cfg), lm_head=True)
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    workload = Workload.from_config(cfg)
    assert workload.shards == 4
    quarter = footprint.estimate(empty, empty.config, workload, lm_head=True)
    # full fine-tuning in fp32: weights and gradients 4 bytes a parameter, Adam 8, a quarter on each rank
    assert (quarter.weights, quarter.gradients, quarter.optimizer) == (params, params, 2 * params)
    assert (whole.weights, whole.gradients, whole.optimizer) == (4 * params, 4 * params, 8 * params)
    assert quarter.activations == whole.activations > 0  # each rank's own micro-batch
    ddp = compose_config([*FSDP[:-2], *BUDGET, "method=fft"])
    assert Workload.from_config(ddp).shards == 1  # DDP keeps a whole replica per rank


def test_a_model_that_fits_only_sharded_is_built_under_fsdp(monkeypatch):
    cfg = compose_config([*FSDP, *BUDGET, "method=lora"])
    empty, _ = build_model(cfg.model, 0, head="lm", device=torch.device("meta"))
    whole = footprint.estimate(empty, empty.config, Workload.from_config(cfg), lm_head=True)
    available = whole.total - 1  # one byte short for a whole replica
    monkeypatch.setattr(footprint, "available_memory", lambda device: available)
    with pytest.raises(ConfigError, match="needs ~"):
        build_model(cfg.model, 0, head="lm", workload=Workload.from_config(cfg))
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    model, _ = build_model(cfg.model, 0, head="lm", workload=Workload.from_config(cfg))
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("shards", [1, 2])
def test_a_random_base_for_fsdp_is_materialised_on_the_cpu(monkeypatch, shards):
    """``model.pretrained=false``: the random weights go where FSDP takes them from (the CPU) when the
    model will be sharded, else to the run's device (here a CUDA device that is never allocated on)."""
    places = []

    def materialise(model, device, seed=0):
        places.append(device)
        return real(model, torch.device("meta"), seed)

    real = architecture.materialise
    monkeypatch.setattr(architecture, "materialise", materialise)
    monkeypatch.setattr(footprint, "available_memory", lambda device: 1 << 40)
    cfg = compose_config(["model=smollm2_135m", "model.pretrained=false", "model.num_layers=1", "task=gsm8k"])
    workload = dataclasses.replace(Workload.from_config(cfg), shards=shards)
    build_model(cfg.model, 0, head="lm", workload=workload, device=torch.device("cuda", 0))
    assert places == [torch.device("cpu") if shards > 1 else torch.device("cuda", 0)]


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def local_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters held by this rank (a DTensor's local shard)."""
    tensors = [getattr(p, "_local_tensor", p) for p in module.parameters()]
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("method", ["lora", "fft"])
def test_the_model_is_sharded_before_it_is_moved(tmp_path, monkeypatch, one_rank_group, method):
    """Every ``Module.to(device)`` of the run's set-up is recorded with whether FSDP has sharded yet."""
    moves, sharded = [], [False]
    real_to, real_shard = torch.nn.Module.to, distributed.fully_shard_model

    def recording_to(self, *args, **kwargs):
        targets = [*args, *kwargs.values()]
        if any(isinstance(a, torch.device | str) for a in targets) and any(True for _ in self.parameters()):
            moves.append((id(self), sharded[0], local_bytes(self)))
        return real_to(self, *args, **kwargs)

    def recording_shard(model):
        sharded[0] = True
        return real_shard(model)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    monkeypatch.setattr(distributed, "fully_shard_model", recording_shard)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # the build plans for two ranks
    overrides = [*FSDP, *BUDGET, f"method={method}", "progress_bar=false", f"hydra.run.dir={tmp_path}"]
    trainer = build_trainer(compose_config(overrides), RunDir(tmp_path))
    model = trainer.model
    assert trainer.sharded
    of_model = [(done, size) for key, done, size in moves if key == id(model)]
    assert of_model and all(done for done, _ in of_model), moves  # never moved whole before sharding


def reshards_after_forward(model: torch.nn.Module) -> list[bool]:
    from torch.distributed.fsdp import FSDPModule

    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    return [g._reshard_after_forward for m in groups for g in m._get_fsdp_state()._fsdp_param_groups]


def test_unsharded_restores_what_training_reshards(tmp_path, one_rank_group):
    """After decoding, each shard group reshards after forward as FSDP set it up (the root keeps its
    weights, the blocks free theirs), and every weight is a shard again."""
    cfg = compose_config([*FSDP, *BUDGET, "method=lora", "progress_bar=false", f"hydra.run.dir={tmp_path}"])
    model = build_trainer(cfg, RunDir(tmp_path)).model
    ids = torch.ones(2, 5, dtype=torch.long)
    model(ids, torch.ones_like(ids), ids)  # FSDP's lazy set-up: the root is the model
    before = reshards_after_forward(model)
    assert True in before
    with distributed.unsharded(model):
        model.generate(ids, torch.ones_like(ids), 3, eos_token_id=0)
    assert reshards_after_forward(model) == before
    assert all(type(p).__name__ == "DTensor" for p in model.parameters())


COUNTER = """
import json, os, sys
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from peftlab.models import lm

calls, gathers = [], [0]
real = {name: getattr(dist, name) for name in ("all_gather_single", "all_gather_into_tensor")}

def counting(name):
    def gather(*args, **kwargs):
        gathers[0] += 1
        return real[name](*args, **kwargs)
    return gather

for name in real:
    setattr(dist, name, counting(name))
real_forward, real_generate, after_forward = lm.CausalLM.forward, lm.CausalLM.generate, [0]

def forward(self, *args, **kwargs):  # evaluation's teacher-forced forward comes before each generate
    out = real_forward(self, *args, **kwargs)
    after_forward[0] = gathers[0]
    return out

def generate(self, *args, **kwargs):  # what was gathered since that forward: for decoding
    new = real_generate(self, *args, **kwargs)
    groups = sum(isinstance(m, FSDPModule) for m in self.modules())
    calls.append({"gathers": gathers[0] - after_forward[0], "groups": groups, "tokens": new.shape[1]})
    return new

lm.CausalLM.forward, lm.CausalLM.generate = forward, generate
from peftlab.cli import main
try:
    main()
finally:
    with open(os.path.join(os.environ["COUNT_DIR"], os.environ["RANK"] + ".json"), "w") as handle:
        json.dump(calls, handle)
"""


@pytest.mark.slow  # torchrun: two processes and a rendezvous
def test_generation_gathers_each_block_once(tmp_path):
    script = tmp_path / "count.py"
    script.write_text(COUNTER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COUNT_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's peftlab
    # an evaluation after step 1, then a training step on the resharded model, then the final evaluation
    args = [*FSDP, *BUDGET, "method=lora", "schedule=quick"]
    args += ["schedule.max_steps=2", "schedule.eval_every_steps=1"]
    args += ["task.max_train_samples=8", "task.max_eval_samples=4", "schedule.eval_batch_size=4"]
    args += ["progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*command, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for rank in ("0", "1"):
        calls = json.loads((tmp_path / f"{rank}.json").read_text())
        assert len(calls) == 2, calls  # one batch, two evaluations
        for call in calls:
            assert call["tokens"] > 1, call  # several decoding steps, each a forward of every block
            assert 0 < call["gathers"] <= call["groups"], call  # once per shard group, not per token
