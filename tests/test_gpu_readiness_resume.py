"""Resume on CUDA without a GPU: the CUDA RNG API is faked (a state per device, a current device,
``invalid device ordinal`` past the last one), so a checkpoint saved with 8 GPUs visible restores
on 1, and under torchrun each rank restores the state of its own device. The trained tensors of a
checkpoint are copied to the CPU (a GPU copy would double full fine-tuning's memory)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from peftlab import distributed
from peftlab.train import rng
from peftlab.train.history import History
from peftlab.train.trainer import Trainer

STATE_BYTES = 16  # a CUDA (Philox) generator state: seed and offset


class FakeCudaRng:
    """``torch.cuda``'s RNG functions on a machine with ``devices`` GPUs, ``current`` the device this
    process uses; device i starts in a state filled with i."""

    def __init__(self, devices: int, current: int = 0) -> None:
        self.states = [torch.full((STATE_BYTES,), i, dtype=torch.uint8) for i in range(devices)]
        self.current = current

    def index(self, device) -> int:
        if isinstance(device, int):
            index = device
        else:
            index = torch.device(device).index
            index = self.current if index is None else index
        if index >= len(self.states):
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self.index(device)] = state.clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for i, state in enumerate(states):  # as torch does: device i gets entry i
            self.set_rng_state(state, i)

    def install(self, monkeypatch) -> FakeCudaRng:
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        return self

    def advance(self, value: int) -> torch.Tensor:
        """The current device's generator moved on (as dropout would), to a state filled with ``value``."""
        self.states[self.current] = torch.full((STATE_BYTES,), value, dtype=torch.uint8)
        return self.states[self.current]


def through_a_file(state, tmp_path):
    torch.save(state, tmp_path / "rng.pt")
    return torch.load(tmp_path / "rng.pt", weights_only=True)


def test_a_state_saved_with_8_gpus_visible_restores_on_1(monkeypatch, tmp_path):
    saver = FakeCudaRng(8).install(monkeypatch)
    trained = saver.advance(200)
    saved = through_a_file(rng.rng_state(), tmp_path)
    loader = FakeCudaRng(1).install(monkeypatch)
    rng.set_rng_state(saved)
    assert torch.equal(loader.states[0], trained)


def test_a_save_of_every_visible_device_restores_this_device_on_1(monkeypatch, tmp_path):
    """A state whose ``cuda`` holds the 8 devices' states (``get_rng_state_all``): this device's entry."""
    saver = FakeCudaRng(8).install(monkeypatch)
    trained = saver.advance(200)
    saved = through_a_file({**rng.rng_state(), "cuda": saver.get_rng_state_all()}, tmp_path)
    loader = FakeCudaRng(1).install(monkeypatch)
    rng.set_rng_state(saved)
    assert torch.equal(loader.states[0], trained)


def fake_ranks(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "enabled", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def saved_by_8_ranks(monkeypatch, tmp_path) -> tuple[list, list[torch.Tensor]]:
    """What rank 0 of 8 processes (one per GPU) writes: every rank's state, each rank's device moved on."""
    own = [FakeCudaRng(8, current=r) for r in range(8)]
    for r, process in enumerate(own):
        process.advance(100 + r)
    states = []
    for r in range(8):
        own[r].install(monkeypatch)
        states.append(rng.rng_state())

    def all_gather_object(out, value):
        out[:] = states
        assert value["cuda"].equal(states[7]["cuda"])  # this (last installed) rank's own state

    fake_ranks(monkeypatch, 7, 8)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    saved = through_a_file(rng.gathered_rng_state(), tmp_path)
    return saved, [o.states[r] for r, o in enumerate(own)]


def test_under_torchrun_each_rank_restores_its_own_device_state(monkeypatch, tmp_path):
    saved, trained = saved_by_8_ranks(monkeypatch, tmp_path)
    assert len(saved) == 8
    for r in (1, 5):
        fake_ranks(monkeypatch, r, 8)
        loader = FakeCudaRng(8, current=r).install(monkeypatch)
        rng.set_rng_state(saved)
        assert torch.equal(loader.states[r], trained[r])
        assert all(torch.equal(s, torch.full_like(s, i)) for i, s in enumerate(loader.states) if i != r)


def test_8_ranks_resumed_by_one_process_restore_rank_0_and_say_it_is_not_exact(monkeypatch, tmp_path, caplog):
    saved, trained = saved_by_8_ranks(monkeypatch, tmp_path)
    monkeypatch.setattr(distributed, "enabled", lambda: False)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    loader = FakeCudaRng(1).install(monkeypatch)
    with caplog.at_level(logging.WARNING):
        rng.set_rng_state(saved)
    assert torch.equal(loader.states[0], trained[0])
    assert "RNG states of 8 process(es), this run has 1" in caplog.text and "not bit-exact" in caplog.text


def test_a_cuda_state_resumed_without_cuda_is_named(monkeypatch, tmp_path, caplog):
    FakeCudaRng(1).install(monkeypatch).advance(9)
    saved = through_a_file(rng.rng_state(), tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        rng.set_rng_state(saved)
    assert "CUDA is not available" in caplog.text


class OnFakeGpu(torch.Tensor):
    """A CPU tensor that says it is on cuda:0, and stays "on the GPU" through every op except a move
    to the CPU."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        if func is torch.Tensor.to and any(str(a) == "cpu" for a in (*args[1:], kwargs.get("device"))):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def test_a_checkpoint_copies_the_trained_tensors_to_the_cpu():
    trained = torch.arange(6.0).reshape(2, 3).as_subclass(OnFakeGpu)
    assert trained.clone().device.type == "cuda"  # the fake holds: a copy stays on the "GPU"
    trainer = SimpleNamespace(
        method=SimpleNamespace(adapter_state_dict=lambda model: {"w": trained}, state_dict=dict),
        model=None,
        cfg=SimpleNamespace(options=SimpleNamespace(run_id="run")),
        state=SimpleNamespace(step=3),
        optimizer=SimpleNamespace(state_dict=dict),
        flush_step_times=lambda: None,
        history=History(),
        trainable_start=6,
    )
    payload = Trainer.state_dict(trainer, SimpleNamespace(to_checkpoint=dict))  # type: ignore[arg-type]
    saved = payload["adapter"]["w"]
    assert saved.device.type == "cpu" and type(saved) is torch.Tensor
    assert torch.equal(saved, torch.arange(6.0).reshape(2, 3))
    assert saved.untyped_storage().data_ptr() != trained.untyped_storage().data_ptr()
