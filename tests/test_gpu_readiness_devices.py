"""Device audit for CUDA: every method runs set-up and a few training steps on the tiny BERT while a
``TorchFunctionMode`` records the tensors that method and block code (peftlab/methods, peftlab/blocks)
creates without ``device=``; the collectives of ``peftlab.distributed`` check that what they are given
was not one of those. On CUDA such a tensor is a CPU tensor: NCCL refuses it, and mixing it with the
model's tensors fails. Host bookkeeping (indices read with ``.tolist()``) says ``device="cpu"``.

Resume: a method's state, saved to a checkpoint and loaded onto the CPU, is loaded into the fresh method
as copies (no storage shared with the payload) on the device of the model's parameters."""

from __future__ import annotations

import io
import sys
import weakref
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from torch.overrides import TorchFunctionMode

from peftlab import distributed
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

PACKAGE = Path(distributed.__file__).resolve().parent
AUDITED = (PACKAGE / "methods", PACKAGE / "blocks")
FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.scalar_tensor,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
}
# (method, overrides): each reaches the code that creates tensors for collectives (SPSFT's Taylor
# scores, Light-PEFT's pruning within the steps, AFLoRA's freezing)
METHODS = [
    ("lora", []),
    ("dora", []),
    ("elora", []),
    ("aflora", ["method.t_initial=0.25", "method.t_final=0.75", "method.delta_t=1"]),
    ("adapter", []),
    ("spsft", ["method.importance_batches=2"]),
    ("spsft_official", ["method.importance=qm_taylor", "method.importance_batches=2"]),
    ("light_peft", ["method.estimation_steps=2"]),
    ("light_peft_adapter", ["method.estimation_steps=2"]),
    ("fft", []),
    ("head", []),
    ("peft", []),
]


def audited_caller() -> str | None:
    """``file:line`` of the factory's direct caller when that is audited code (tensors that torch or
    data code makes on a method's behalf, e.g. the DataLoader's collation, are not audited)."""
    frame = sys._getframe(2)  # 0: here, 1: __torch_function__, 2: the caller of the factory
    path = Path(frame.f_code.co_filename).resolve()
    if any(path.is_relative_to(root) for root in AUDITED):
        return f"{path.relative_to(PACKAGE)}:{frame.f_lineno}"
    return None


class DevicelessFactories(TorchFunctionMode):
    """Records the tensor factory calls of audited code made without ``device=`` (``as_tensor`` of a
    tensor keeps its device and is not one)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: set[str] = set()
        self._made: dict[int, tuple[weakref.ref, str]] = {}  # id -> (the tensor, where it was made)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES and "device" not in kwargs:
            if func is torch.as_tensor and args and isinstance(args[0], torch.Tensor):
                return out
            site = audited_caller()
            if site is not None:
                self.sites.add(site)
                self._made[id(out)] = (weakref.ref(out), site)
        return out

    def site_of(self, tensor: torch.Tensor) -> str | None:
        """Where ``tensor`` was made without ``device=`` (None: it was not; ids of dead tensors recur)."""
        ref, site = self._made.get(id(tensor), (None, None))
        return site if ref is not None and ref() is tensor else None


@pytest.fixture
def audit(monkeypatch):
    """The factory audit, and collectives that refuse a device-less tensor or one off the model."""
    mode = DevicelessFactories()
    seen: list[str] = []

    def checked(collective):
        def run(tensor: torch.Tensor) -> torch.Tensor:
            seen.append(mode.site_of(tensor) or "")
            return collective(tensor)

        return run

    for name in ("all_reduce_sum", "all_reduce_mean"):
        monkeypatch.setattr(distributed, name, checked(getattr(distributed, name)))
    return mode, seen


@pytest.mark.parametrize(("method", "extra"), METHODS, ids=[m for m, _ in METHODS])
def test_method_code_creates_every_tensor_on_an_explicit_device(tmp_path, audit, method, extra):
    mode, collective_sites = audit
    cfg = tiny_config(tmp_path, f"method={method}", "schedule.max_steps=4", "measure.flops=false", *extra)
    with mode:
        trainer = build_trainer(cfg, RunDir(tmp_path))
        trainer.model.train()
        batch = next(iter(trainer.train_loader))
        for _ in range(4):
            trainer.train_step(batch)
        trainer.method.on_train_end(trainer.state)
    bad_collectives = sorted({s for s in collective_sites if s})
    assert not bad_collectives, f"collectives got tensors made without device= at {bad_collectives}"
    assert not mode.sites, f"tensors made without device= at {sorted(mode.sites)}"
    if method in ("spsft", "spsft_official", "light_peft", "light_peft_adapter"):
        assert collective_sites  # the audited collectives were reached
    if method.startswith("light_peft"):
        assert trainer.method.record is not None  # pruned within the steps


# -- resume ---------------------------------------------------------------------------------------------


def tensors_of(value) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a method state (dicts, lists, tuples), by path."""
    if isinstance(value, torch.Tensor):
        return [("", value)]
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, (list, tuple))
        else []
    )
    return [(f"{k}/{p}", t) for k, v in items for p, t in tensors_of(v)]


STATEFUL = [
    ("aflora", ["method.t_initial=0.25", "method.t_final=0.75", "method.delta_t=1"]),
    ("light_peft", ["method.estimation_steps=4"]),  # 3 steps: in the second half, scores recorded
    ("light_peft_adapter", ["method.estimation_steps=4"]),
    ("light_peft_pruned", ["method=light_peft", "method.estimation_steps=2"]),
]
HOST_STATE = {"final_masks"}  # Light-PEFT's report copies, kept on the CPU as ``prune`` keeps them


@pytest.mark.parametrize(("name", "extra"), STATEFUL, ids=[n for n, _ in STATEFUL])
def test_resumed_method_state_is_copied_onto_the_model_device(tmp_path, name, extra):
    """Loaded into a CPU model: no tensor shares the payload's storage; into a model on the ``meta``
    device (a device other than the payload's, as CUDA is): every tensor is on it."""
    method = [] if any(o.startswith("method=") for o in extra) else [f"method={name}"]
    overrides = [*method, "schedule.max_steps=6", "measure.flops=false", *extra]
    trainer = build_trainer(tiny_config(tmp_path, *overrides), RunDir(tmp_path / "a"))
    batch = next(iter(trainer.train_loader))
    for _ in range(3):
        trainer.train_step(batch)
    buffer = io.BytesIO()
    torch.save(trainer.method.state_dict(), buffer)
    saved = buffer.getvalue()
    load = lambda: torch.load(io.BytesIO(saved), map_location="cpu", weights_only=False)  # noqa: E731
    assert tensors_of(load()), "the method has tensor state to resume"

    payload = load()
    storages = {t.untyped_storage().data_ptr() for _, t in tensors_of(payload)}
    fresh = build_trainer(tiny_config(tmp_path, *overrides), RunDir(tmp_path / "b"))
    fresh.method.load_state_dict(payload, fresh.model)
    shared = [
        p for p, t in tensors_of(fresh.method.state_dict()) if t.untyped_storage().data_ptr() in storages
    ]
    assert not shared, f"method state shares the loaded payload's storage: {shared}"

    on_meta = build_trainer(tiny_config(tmp_path, *overrides, "model.device=meta"), RunDir(tmp_path / "c"))
    on_meta.method.load_state_dict(load(), on_meta.model)
    assert next(on_meta.model.parameters()).is_meta
    elsewhere = [
        f"{p} ({t.device})"
        for p, t in tensors_of(on_meta.method.state_dict())
        if p.split("/")[0] not in HOST_STATE and not t.is_meta
    ]
    assert not elsewhere, f"method state not on the model's device: {elsewhere}"
