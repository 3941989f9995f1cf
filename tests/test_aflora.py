"""AFLoRA and ELoRA against their definitions: step 0 equals the base model; PMs train where configured;
a frozen PM costs nothing (no gradient, no optimizer state, no weight decay); every PM is frozen by the
end; the ablation switches change what they claim; ELoRA's projections are one seeded shared pair."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.blocks.lowrank import low_rank_layers
from peftlab.methods.base import build_method
from peftlab.run.experiment import build_trainer, run_experiment
from peftlab.run.folder import RunDir


def method(name, **options):
    return build_method(OmegaConf.create({"name": name, **options}))


def aflora(**options):
    defaults = {"t_final": 0.3}  # conf/method/aflora.yaml reads it from the schedule preset
    return method("aflora", **{**defaults, **options})


@pytest.mark.parametrize("build", [lambda: aflora(), lambda: method("elora", rank=64)])
def test_step0_output_equals_base(tiny_model, batch, build):
    model, _ = tiny_model
    base = model(**batch).logits
    build().setup(model)
    assert len(low_rank_layers(model)) == 12
    assert torch.equal(model(**batch).logits, base)


def trainable_pms(model):
    return {
        f"{n}.{k}"
        for n, layer in low_rank_layers(model)
        for k in ("lora_A", "lora_B")
        if getattr(layer, k).requires_grad
    }


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ("ffn", {"intermediate.dense", "output.dense"}),
        (
            "attention",
            {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"},
        ),
        ("none", set()),
    ],
)
def test_pm_placement(tiny_model, placement, expected):
    model, _ = tiny_model
    aflora(pm_trainable=placement).setup(model)
    pms = trainable_pms(model)
    suffixes = {name.split(".", 4)[-1].rsplit(".", 1)[0] for name in pms}
    assert suffixes == expected
    assert len(pms) == 2 * 2 * len(expected)  # 2 layers x (A, B)
    for _, layer in low_rank_layers(model):  # vectors train everywhere
        assert layer.vec_d.requires_grad and layer.vec_b.requires_grad


def test_both_placement_trains_every_pm(tiny_model):
    model, _ = tiny_model
    aflora(pm_trainable="both").setup(model)
    assert len(trainable_pms(model)) == 24


def graph_leaves(loss: torch.Tensor) -> set[int]:
    """ids of the tensors that autograd will accumulate a gradient into for ``loss``."""
    seen, stack, leaves = set(), [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.add(id(node.variable))
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def test_a_frozen_pm_costs_nothing(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "method=aflora",
        "method.delta_t=1",
        "method.t_initial=0.1",
        "method.t_final=0.2",
        "schedule.max_steps=20",
        "schedule.weight_decay=0.5",
        "task.max_train_samples=160",
    )
    trainer = build_trainer(cfg, RunDir(tmp_path))
    aflora_method = trainer.method
    batches = iter(trainer.train_loader)
    batch = next(batches)
    while len(aflora_method.frozen_at) in (0, len(aflora_method.pm_names)):
        assert trainer.state.step < 20, "nothing froze part-way"
        trainer.train_step(batch)
    frozen_names = set(aflora_method.frozen_at)
    params = dict(trainer.model.named_parameters())
    frozen = [params[n] for n in frozen_names]
    live = [params[n] for n in aflora_method.pm_names if n not in frozen_names]
    assert frozen and live
    before = [p.detach().clone() for p in frozen]
    for _ in range(3):
        batch = next(batches)
        loss = trainer.model(**batch).loss
        in_graph = graph_leaves(loss)
        # 1. no gradient is computed: the frozen PM is not a leaf of the backward graph
        assert not any(id(p) in in_graph for p in frozen)
        assert all(id(p) in in_graph for p in live if p.requires_grad)  # (more may freeze meanwhile)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.train_step(batch)
        assert all(p.grad is None and not p.requires_grad for p in frozen)
    # 2. no optimizer state, not in any parameter group
    in_groups = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_groups or p in trainer.optimizer.state for p in frozen)
    assert all(p in trainer.optimizer.state for p in live if p.requires_grad)
    # 3. no weight decay (and no update at all), although weight_decay is 0.5
    for p, old in zip(frozen, before, strict=True):
        assert torch.equal(p, old)


def run(tmp_path, *overrides):
    cfg = tiny_config(
        tmp_path,
        "method=aflora",
        "method.delta_t=2",
        "method.t_initial=0.1",
        "method.t_final=0.3",
        "schedule.max_steps=24",
        "task.max_train_samples=96",
        "schedule.log_every_steps=4",
        *overrides,
    )
    results = run_experiment(cfg)
    trace = json.loads((tmp_path / "freeze_trace.json").read_text())
    return results, trace


def test_every_pm_is_frozen_by_the_end_and_reported(tmp_path):
    results, trace = run(tmp_path)
    report = results["method_report"]
    assert len(trace) == 8 and all(step is not None for step in trace.values())
    assert max(trace.values()) <= 24 - round(0.3 * 24)  # all frozen by T - t_f
    assert len(set(trace.values())) > 1  # frozen progressively, not all at once
    assert report["pms_frozen"] == report["pms_trainable_at_start"] == 8
    counts = results["trainable_params"]
    pm_params = 2 * (4 * 32 + 64 * 4 + 4 * 64 + 32 * 4)  # 2 layers x (inter A, B; out A, B), rank 4
    assert counts["start"] - counts["end"] == pm_params
    assert counts["end"] < counts["mean_over_steps"] < counts["start"]
    assert (tmp_path / report["freeze_heatmap"]).stat().st_size > 0
    assert report["median_step_time_after_freezing_s"] > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["trainable_params"] for r in rows if "trainable_params" in r]
    assert logged == sorted(logged, reverse=True) and logged[-1] == counts["end"]


EMPTY_RAMP = ("method.t_initial=1", "method.t_final=0.7", "schedule.max_steps=null", "schedule.epochs=3")


def test_an_empty_freezing_ramp_is_warned_and_every_pm_freezes_at_t_initial(tmp_path, caplog):
    """t_i = 1 epoch and t_f = 0.7 of 3 epochs: T - t_f falls before t_i (the study preset's old bug)."""
    with caplog.at_level("WARNING", logger="peftlab.methods.aflora.method"):
        results, trace = run(tmp_path, *EMPTY_RAMP)
    [warning] = [r.getMessage() for r in caplog.records if "freezing ramp" in r.getMessage()]
    steps_per_epoch = results["steps"] // 3
    assert f"t_initial=1 ({steps_per_epoch} steps)" in warning and "aflora_fractions" in warning
    assert set(trace.values()) == {steps_per_epoch}  # all at once, at t_i


def test_a_ramp_of_the_paper_proportions_is_not_warned(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="peftlab.methods.aflora.method"):
        run(tmp_path)
    assert not [r for r in caplog.records if "freezing ramp" in r.getMessage()]


def test_freezing_off_keeps_pms_trainable(tmp_path):
    results, trace = run(tmp_path, "method.freezing=false")
    assert all(step is None for step in trace.values())
    assert results["trainable_params"]["start"] == results["trainable_params"]["end"]


def test_freeze_pairs_freezes_a_and_b_together(tmp_path):
    _, trace = run(tmp_path, "method.freeze_pairs=true")
    layers = {name.rsplit(".", 1)[0] for name in trace}
    assert all(trace[f"{layer}.lora_A"] == trace[f"{layer}.lora_B"] for layer in layers)


def test_score_switch_reaches_the_scorer(tiny_model):
    model, _ = tiny_model
    m = aflora(score="weight_grad")
    m.setup(model)
    assert m.scorer.kind == "weight_grad"


@pytest.mark.parametrize(("rule", "expected"), [("paper", [0, 1]), ("code", [0])])
def test_freeze_rules_by_hand(tiny_model, rule, expected):
    model, _ = tiny_model
    m = aflora(freeze_rule=rule, pm_trainable="ffn")
    m.setup(model)
    scorer = m.scorer
    scorer.set_active([0, 1, 2, 3])  # four PMs with element scores 1, 2, 3, 4 (constant within a PM)
    for i in range(len(scorer.params)):
        scorer.i_bar[i].fill_(float(i + 1))
        scorer.u_bar[i].fill_(1.0)
    assert [scorer.params[i].numel() for i in range(4)] == [128, 256, 256, 128]  # inter A, B; out A, B
    # paper: 8 PMs in all, 4 already frozen; r = 0.75 -> floor(6) - 4 = 2 more: the two lowest, 0 and 1.
    # code: 768 elements (128 of score 1, 256 of 2, 256 of 3, 128 of 4); r = 0.5 -> k = 384 -> the
    # cutoff is the 384th smallest element = 2, and only the PM with mean 1 is below it.
    fraction = 0.75 if rule == "paper" else 0.5
    if rule == "code":
        elements = torch.cat([scorer.element_scores(i).flatten() for i in range(4)])
        cutoff = torch.kthvalue(elements, int(elements.numel() * fraction)).values.item()
        assert cutoff == 2.0  # so only the PM scoring 1 is below it
    assert sorted(m._select(fraction)) == expected


def test_elora_projections_are_one_seeded_shared_pair(tiny_model):
    model, _ = tiny_model
    m = method("elora", rank=64)  # larger than the hidden size 32: allowed for random projections
    m.setup(model)
    layers = low_rank_layers(model)
    shared = layers[0][1].fixed
    assert all(layer.fixed is shared for _, layer in layers)
    assert shared.A.shape == (64, 64) and shared.B.shape == (64, 64)  # sized to the largest layer (FFN 64)
    a, b = layers[0][1].projections()
    assert torch.equal(a, shared.A[:, :32]) and a.data_ptr() == shared.A.data_ptr()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith((".vec_d", ".vec_b")) or n.startswith("head.") for n in trainable)
    assert not any("fixed" in name for name in model.state_dict())  # regenerated, not saved
    again = method("elora", rank=64)
    model2 = type(model)(type(model.backbone)(model.backbone.config), 2)
    again.setup(model2)
    assert torch.equal(low_rank_layers(model2)[0][1].fixed.A, shared.A)
    other = method("elora", rank=64, projection_seed=1)
    model3 = type(model)(type(model.backbone)(model.backbone.config), 2)
    other.setup(model3)
    assert not torch.equal(low_rank_layers(model3)[0][1].fixed.A, shared.A)


def test_elora_per_layer_projections_differ(tiny_model):
    model, _ = tiny_model
    method("elora", rank=8, shared_projections=False).setup(model)
    layers = low_rank_layers(model)
    assert layers[0][1].fixed is not layers[1][1].fixed
    assert not torch.equal(layers[0][1].fixed.A, layers[1][1].fixed.A)


@pytest.mark.parametrize("save", ["false", "true"])
def test_elora_adapter_reload_is_exact(tmp_path, save):
    cfg = tiny_config(tmp_path / "run", "method=elora", "method.rank=64", f"method.save_projections={save}")
    run_experiment(cfg)
    saved = json.loads((tmp_path / "run" / "adapter.json").read_text())["tensors"]
    assert any(k.endswith("fixed.A") for k in saved) == (save == "true")
    out = tmp_path / "eval"
    reloaded = run_experiment(tiny_config(out, "eval_only=true", f"load_from={tmp_path / 'run'}"))
    final = json.loads((tmp_path / "run" / "results.json").read_text())["final_eval"]
    assert reloaded["eval"]["accuracy"] == final["accuracy"]
    assert reloaded["eval"]["loss"] == pytest.approx(final["loss"], abs=1e-6)
