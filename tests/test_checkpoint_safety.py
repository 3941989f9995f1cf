"""A checkpoint is read without running code: a crafted ``checkpoints/step_*.pt`` in a shared run folder
(a pickle whose ``__reduce__`` calls a function) is refused, and the function never runs."""

from __future__ import annotations

import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.run.checkpoint import read_checkpoint, usable_checkpoint
from peftlab.train.rng import rng_state, set_rng_state


class Crafted:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "written_by_the_pickle"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "step_0000004.pt"
    torch.save({"run_id": "abc", "step": 4, "payload": Crafted(str(marker))}, path)
    with pytest.raises(ConfigError, match="no usable checkpoint of run abc.*unreadable"):
        usable_checkpoint(tmp_path / "run", "abc")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_checkpoint(path)
    assert not marker.exists()


def test_rng_state_is_tensors_and_plain_values_and_round_trips(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.array_equal(np.random.rand(3), expected[2])
