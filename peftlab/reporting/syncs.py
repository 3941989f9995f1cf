"""Host syncs per training step of every method preset (``conf/method/*.yaml``), counted on CPU: a
``TorchDispatchMode`` counts the ops that make a GPU step wait for the host to read a value
(``.item()``/``float()``/``int()`` of a tensor, ``nonzero`` and boolean-mask indexing, whose output size
is data-dependent, ``equal``). Over steps 2-4 of a run on the random tiny BERT (hidden 256, as
``gpu_check``), each step's syncs are split into the model's own forward and backward (e.g. the attention
mask's checks) and what the loop and the method add.

    python -m peftlab.reporting.syncs            # the table in docs/gpu.md
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from peftlab.config import compose_config
from peftlab.reporting.gpu_check import MODEL, method_names
from peftlab.reporting.markdown import table

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.equal, aten.masked_select, aten.is_nonzero}
MASK_INDEXING = {aten.index, aten.index_put, aten.index_put_}
STEPS = (2, 3, 4)  # steps 0 (the FLOP count) and 1 (Adam's state is created) left out
BASE = ["progress_bar=false", "curves=false", "schedule=quick", "task.max_train_samples=64", *MODEL]
# what makes a preset's run short (the same as scripts/gpu_check.sh asks of Light-PEFT)
QUICK = {
    "light_peft": ["method.estimation_steps=4"],
    "light_peft_adapter": ["method.estimation_steps=4"],
}


def is_sync(func, args) -> bool:
    packet = func.overloadpacket
    if packet in SYNC_OPS:
        return True
    if packet in MASK_INDEXING:  # a boolean mask is turned into indices: nonzero inside the kernel
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_leaves(args[1]))
    return False


class CountSyncs(TorchDispatchMode):
    """Counts the host syncs (``is_sync``) among the ops that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if is_sync(func, args):
            self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def syncs(fn) -> int:
    with CountSyncs() as mode:
        fn()
    return sum(mode.counts.values())


@dataclass
class StepSyncs:
    method: str
    model: list[int]  # the model's own forward + backward, per step of STEPS
    step: list[int]  # the whole training step, per step of STEPS

    @property
    def added(self) -> int:
        """Most syncs the loop and the method add to one step over the model's own."""
        return max(s - m for s, m in zip(self.step, self.model, strict=True))


def count_method(method: str, out: Path, *overrides: str) -> StepSyncs:
    """Syncs over steps 2-4 of ``method`` on the tiny BERT (output files under ``out``)."""
    from peftlab.run.experiment import build_trainer  # the run layer, lazily: reporting sits above it
    from peftlab.run.folder import RunDir

    cfg = compose_config([*BASE, f"method={method}", *QUICK.get(method, []), f"output_dir={out}", *overrides])
    trainer = build_trainer(cfg, RunDir(out))
    trainer.model.train()
    batches = iter(trainer.train_loader)
    for _ in range(STEPS[0]):
        trainer.train_step(next(batches))
    result = StepSyncs(method, [], [])
    for _ in STEPS:
        batch = next(batches)
        with trainer.autocast():
            result.model.append(syncs(lambda b=batch: trainer.model(**b).loss.backward()))
        trainer.optimizer.zero_grad(set_to_none=True)
        result.step.append(syncs(lambda b=batch: trainer.train_step(b)))
    return result


def sync_table(methods: list[str]) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            r = count_method(method, Path(tmp) / method)
            rows.append([method, "/".join(map(str, r.step)), "/".join(map(str, r.model)), str(r.added)])
    header = ["method", "syncs per step (steps 2/3/4)", "of the model's own", "added by loop + method"]
    return "\n".join(table(header, rows, align="lrrr"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("methods", nargs="*", help="presets of conf/method (default: all)")
    args = parser.parse_args(argv)
    print(sync_table(args.methods or method_names()))


if __name__ == "__main__":
    main()
