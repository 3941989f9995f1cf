"""``task.group_by_length=true``: training batches of examples of similar length, so that less of each
padded batch is padding (on RTE about half of a batch padded to 128 tokens is padding).

The order is still random and seeded (the loader's generator, so resuming mid-epoch works as before):
shuffle, cut into mega-batches of ``MEGA_BATCHES`` batches, sort each mega-batch by length (longest
first), so consecutive ``batch_size`` slices hold similar lengths; then the batches are shuffled, so
the long ones are not all at the start of every mega-batch (as transformers' ``LengthGroupedSampler``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

MEGA_BATCHES = 50


class LengthGroupedSampler(Sampler[int]):
    """Indices of an epoch, each ``batch_size`` slice of similar ``lengths``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator  # read by the loop (its state at each epoch start) and by resume

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        mega = self.batch_size * MEGA_BATCHES
        grouped: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            grouped += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # the last (short) batch of each mega-batch stays last of the epoch: full batches are shuffled
        full = [b for b in grouped if len(b) == self.batch_size]
        partial = [b for b in grouped if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=self.generator).tolist()]
        for batch in shuffled + partial:
            yield from batch


def train_sampling(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator | None, group_by_length: bool
) -> dict:
    """DataLoader keyword arguments for the order of a loader: grouped by length, shuffled, or in order
    (``generator`` None: evaluation)."""
    if generator is None:
        return {"shuffle": False}
    # the loader's generator too: its iterator draws a base seed when an epoch starts, from the global RNG
    # without one, which a run resumed mid-epoch would draw once more (its dropout then differs)
    if group_by_length:
        return {"sampler": LengthGroupedSampler(lengths, batch_size, generator), "generator": generator}
    return {"shuffle": True, "generator": generator}


def device_loading(loader: object, device: torch.device, workers: int) -> None:
    """On CUDA: batches collated in ``workers`` processes into pinned host memory (the copy to the
    device then overlaps the step: ``non_blocking``). On CPU: in the main process (workers would take
    the step's cores). The data order is the sampler's, in the main process, either way."""
    if isinstance(loader, DataLoader) and device.type == "cuda":
        loader.num_workers = workers
        loader.pin_memory = True
