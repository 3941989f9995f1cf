"""A random base (``model.pretrained=false``) on a GPU without a GPU: the base is initialised on the
CPU from the run's seed and moved, so it does not depend on the global RNG state nor on the device's
generator, and an export on the CPU rebuilds the base a GPU run trained on; under torchrun the base is
built for and checked against the rank's own GPU (LOCAL_RANK), not ``model.device``'s index.

The fake GPU: ``torch.cuda.is_available`` is true, a module moved to ``cuda:N`` stays on the CPU (the
move is recorded), and allocating on it switches the global RNG to another stream, as a CUDA
generator is another stream than the CPU's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftlab import distributed
from peftlab.config import check_config, compose_config
from peftlab.models import build_model, footprint
from peftlab.run.build import make_model, make_task

TINY = [
    "model=roberta_base",
    "model.pretrained=false",
    "model.num_layers=1",
    "model.config.hidden_size=32",
    "model.config.num_attention_heads=4",
    "model.config.intermediate_size=64",
    "model.device=cpu",
    "task=sst2",
]
DEVICE_STREAM = 12345  # the fake GPU generator's stream


class FakeGpu:
    """Records where modules are allocated, moved and checked for memory."""

    def __init__(self, monkeypatch) -> None:
        self.allocated: list[torch.device] = []
        self.moved: list[torch.device] = []
        self.checked: list[torch.device] = []
        to_empty, to = nn.Module.to_empty, nn.Module.to

        def fake_to_empty(module, *, device, recurse=True):
            device = torch.device(device)
            self.allocated.append(device)
            if device.type != "cuda":
                return to_empty(module, device=device, recurse=recurse)
            to_empty(module, device="cpu", recurse=recurse)
            torch.manual_seed(DEVICE_STREAM)  # what draws on this device draws from its own generator
            return module

        def fake_to(module, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
                self.moved.append(torch.device(target))
                return module
            return to(module, *args, **kwargs)

        def available(device):
            self.checked.append(device)
            return 1 << 50

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(nn.Module, "to_empty", fake_to_empty)
        monkeypatch.setattr(nn.Module, "to", fake_to)
        monkeypatch.setattr(footprint, "available_memory", available)


def backbone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_random_base_does_not_depend_on_the_global_rng_state():
    cfg = compose_config(TINY).model
    torch.manual_seed(1)
    first = backbone(build_model(cfg, 2)[0])
    torch.manual_seed(2)
    second = backbone(build_model(cfg, 2)[0])
    assert_same(first, second)


def test_random_base_is_initialised_on_the_cpu_then_moved_to_the_gpu(monkeypatch):
    on_cpu = backbone(build_model(compose_config(TINY).model, 2)[0])
    gpu = FakeGpu(monkeypatch)
    on_gpu = backbone(build_model(compose_config([*TINY, "model.device=cuda:0"]).model, 2)[0])
    assert gpu.allocated == [torch.device("cpu")]
    assert torch.device("cuda", 0) in gpu.moved and gpu.checked == [torch.device("cuda", 0)]
    assert_same(on_cpu, on_gpu)


def test_an_export_on_the_cpu_rebuilds_the_model_a_gpu_run_trained(monkeypatch):
    """``make_model`` as a training run on a GPU calls it, and as export (``load_finished_run``: no
    device) does, with the global RNG left elsewhere in between."""
    run = check_config(compose_config([*TINY, "model.device=cuda:0"]))
    FakeGpu(monkeypatch)
    trained = make_model(run, make_task(run), torch.device("cuda", 0), None)[0].state_dict()
    trained = {k: v.detach().clone() for k, v in trained.items()}
    monkeypatch.undo()
    torch.manual_seed(99)
    exported = make_model(run, make_task(run), None, None)[0].state_dict()
    assert_same(trained, exported)


def test_under_torchrun_model_device_cuda_0_builds_on_the_ranks_gpu(monkeypatch):
    """``model.device=cuda:0`` with LOCAL_RANK=1: rank 1's base is checked against, and put on, cuda:1;
    nothing of it goes to cuda:0."""
    gpu = FakeGpu(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "enabled", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    run = check_config(compose_config([*TINY, "model.device=cuda:0"]))
    device = distributed.init_from_env(torch.device("cuda", 0))
    assert device == torch.device("cuda", 1)
    make_model(run, make_task(run), device, None)
    assert gpu.checked == [device] and set(gpu.moved) == {device}
    assert torch.device("cuda", 0) not in gpu.allocated


@pytest.mark.parametrize("seed", [0, 7])
def test_the_seed_of_the_run_picks_the_random_base(seed):
    cfg = compose_config(TINY).model
    base = backbone(build_model(cfg, 2, seed=seed)[0])
    other = backbone(build_model(cfg, 2, seed=seed + 1)[0])
    assert any(not torch.equal(base[k], other[k]) for k in base if base[k].is_floating_point())
