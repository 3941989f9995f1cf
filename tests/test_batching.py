"""``task.group_by_length=true``: every example once per epoch, seeded, and batches of similar length
(less padding than shuffled batches on RTE)."""

from __future__ import annotations

import torch
from conftest import tiny_config

from peftlab.run.experiment import build_trainer, run_experiment
from peftlab.run.folder import RunDir
from peftlab.tasks.batching import LengthGroupedSampler


def test_sampler_is_a_seeded_permutation_of_length_groups():
    lengths = [(i * 37) % 101 for i in range(300)]
    order = list(LengthGroupedSampler(lengths, 8, torch.Generator().manual_seed(0)))
    assert sorted(order) == list(range(300))
    assert order == list(LengthGroupedSampler(lengths, 8, torch.Generator().manual_seed(0)))
    spreads = [
        max(lengths[i] for i in order[k : k + 8]) - min(lengths[i] for i in order[k : k + 8])
        for k in range(0, 296, 8)
    ]
    assert max(spreads) <= 10  # a shuffled batch of 8 of these lengths spans ~75


def padding_share(tmp_path, *overrides: str) -> float:
    cfg = tiny_config(tmp_path, "task.max_train_samples=256", "schedule.batch_size=16", *overrides)
    trainer = build_trainer(cfg, RunDir(tmp_path))
    real = padded = 0
    for batch in trainer.train_loader:
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return 1 - real / padded


def test_grouped_rte_batches_hold_less_padding(tmp_path):
    shuffled = padding_share(tmp_path / "a", "schedule.max_seq_length=128", "task.group_by_length=false")
    grouped = padding_share(tmp_path / "b", "schedule.max_seq_length=128", "task.group_by_length=true")
    assert grouped < 0.5 * shuffled


def test_a_grouped_run_resumed_mid_epoch_ends_as_the_uninterrupted_one(tmp_path):
    """The grouped loader draws its epoch's base seed from its own generator (reset on resume), not from
    the global RNG, which the resumed run would draw from once more than the uninterrupted one."""
    grouped = ("task.group_by_length=true", "schedule.max_steps=4", "checkpoint.every_steps=2", "seed=7")
    run = tmp_path / "run"
    expected = run_experiment(tiny_config(run, *grouped))
    assert expected["steps"] == 4 and expected["epochs"] == 1  # step 2 is mid-epoch
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000002.pt"]
    (run / "results.json").unlink()  # as if killed after step 2's checkpoint
    resumed = run_experiment(tiny_config(run, "resume=true"))
    assert resumed["final_eval"] == expected["final_eval"]
