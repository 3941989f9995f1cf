"""Settings around the math that follow the authors' code (the README's "Fidelity" table): targets that
match every encoder layout, weight decay on ELoRA/AFLoRA's vectors, ELoRA's per-layer projections,
Light-PEFT's adapter without biases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config
from test_spsft import Toy, hand_gradients, hand_taylor, toy_batches

from peftlab.blocks.adapter import BottleneckAdapter
from peftlab.blocks.lowrank import low_rank_layers
from peftlab.blocks.protocol import adapter_layers
from peftlab.config import compose_config
from peftlab.methods.base import build_method
from peftlab.models import build_model
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_deberta"])
@pytest.mark.parametrize("method", ["aflora", "elora", "elora_per_layer", "lora_all_linear"])
def test_aflora_presets_adapt_all_six_linears_on_every_encoder(model_name, method):
    cfg = compose_config(["experiment=aflora_glue", f"method={method}", f"model={model_name}", "task=mrpc"])
    model, _ = build_model(cfg.model, num_labels=2)
    build_method(cfg.method).setup(model)
    names = [name.rsplit(".", 2)[-2:] for name, _ in low_rank_layers(model)]
    assert len(names) == 6 * cfg.model.config.num_hidden_layers  # q, k, v, attention-out, FFN in, FFN out
    if model_name == "tiny_deberta":
        assert ["self", "query_proj"] in names and ["self", "value_proj"] in names


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("method", ["aflora", "elora"])
def test_vectors_get_weight_decay_as_in_the_authors_code(tmp_path, method, decay):
    cfg = tiny_config(
        tmp_path, f"method={method}", f"method.decay_vectors={decay}", "schedule.weight_decay=0.1"
    )
    trainer = build_trainer(cfg, RunDir(tmp_path))
    vectors = {id(v) for _, layer in low_rank_layers(trainer.model) for v in layer.vectors()}
    decay_of = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert vectors and {decay_of[v] for v in vectors} == {0.1 if decay else 0.0}


def test_elora_per_layer_projections_are_kaiming_a0_per_layer():
    cfg = compose_config(["method=elora_per_layer", "model=tiny_bert", "method.rank=16"])
    model, _ = build_model(cfg.model, num_labels=2)
    build_method(cfg.method).setup(model)
    layers = low_rank_layers(model)
    assert len({id(layer.fixed) for _, layer in layers}) == len(layers)  # one pair per layer
    for _, layer in layers:
        a, b = layer.projections()
        for matrix, fan_in in ((a, layer.in_features), (b, 16)):
            bound = math.sqrt(6 / fan_in)  # kaiming-uniform, a=0 (peft's VeRA and the AFLoRA authors')
            assert matrix.abs().max() <= bound and matrix.abs().max() > 0.9 * bound
    assert layers[0][1].vec_d.eq(0.1).all() and not layers[0][1].vec_b.any()


def test_light_peft_adapter_has_no_biases_and_normal_init():
    cfg = compose_config(["method=light_peft_adapter", "model=tiny_bert"])
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, num_labels=2)
    build_method(cfg.method).setup(model)
    adapters = [layer for _, layer in adapter_layers(model) if isinstance(layer, BottleneckAdapter)]
    assert adapters and all(a.adapter_down.bias is None and a.adapter_up.bias is None for a in adapters)
    weights = torch.cat([w.detach().flatten() for a in adapters for w in a.low_rank_pair()])
    assert abs(float(weights.std()) - 0.02) < 0.003 and abs(float(weights.mean())) < 0.003
    default = compose_config(["method=adapter", "model=tiny_bert"])
    model, _ = build_model(default.model, num_labels=2)
    build_method(default.method).setup(model)
    houlsby = next(layer for _, layer in adapter_layers(model))
    assert houlsby.adapter_down.bias is not None and not houlsby.adapter_up.weight.any()


def test_head_count_follows_the_authors_quantile_rule():
    from peftlab.blocks.selection import dropped_count, quantile_count

    for n, expected in ((12, 4), (16, 5), (4, 1)):
        scores = torch.randperm(n).float()
        assert quantile_count(n, 0.3333333333) == expected
        assert int((scores < torch.quantile(scores, 1 / 3)).sum()) == expected  # the rule it restates
    assert dropped_count(12, 0.3333333333) == 3  # what floor(ratio x n) gave before


def test_scheduler_stepped_per_epoch_keeps_the_lr_near_its_peak(tmp_path):
    overrides = ["schedule.scheduler_step=epoch", "schedule.warmup_ratio=0", "schedule.epochs=2"]
    trainer = build_trainer(tiny_config(tmp_path, *overrides, "schedule.max_steps=null"), RunDir(tmp_path))
    trainer.fit()
    state, lr = trainer.state, trainer.sched.lr
    assert state.total_steps == 2 * state.steps_per_epoch > 2
    # the last step ran in epoch 2: the scheduler had stepped once, lr = lr0 (T - 1) / T (not ~lr0 / T)
    expected = lr * (state.total_steps - 1) / state.total_steps
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_adapter_only_parameter_average_leaves_the_head_out(tmp_path):
    from peftlab.run.experiment import run_experiment

    results = run_experiment(tiny_config(tmp_path, "task=mrpc", "method=aflora"))
    params = results["trainable_params"]
    head = params["mean_over_steps"] - params["mean_over_steps_without_head"]
    assert head == 32 * 2 + 2  # the tiny model's classifier: hidden 32 -> 2 labels, with bias
    assert results["best_by"] == "f1" and results["best_eval"]["f1"] == max(
        row["eval_f1"]
        for row in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if "eval_f1" in row
    )


def test_frozen_pooler_gets_no_grad_no_optimizer_state_and_is_not_counted(tmp_path):
    overrides = ["experiment=aflora_glue", "method=aflora", "model=tiny_deberta", "model.pooling=pooler"]
    cfg = tiny_config(tmp_path, *overrides, "task=mrpc", "schedule.max_steps=2", "schedule.batch_size=8")
    assert cfg.model.head_pooler == "frozen" and cfg.model.pooler_activation == "gelu"
    trainer = build_trainer(cfg, RunDir(tmp_path))
    head = trainer.model.head
    dense, activation = head.pooler
    assert isinstance(activation, torch.nn.GELU)  # DeBERTa's ContextPooler
    assert abs(float(dense.weight.std()) - 0.02) < 0.003 and not dense.bias.any()  # HF's init, bias 0
    before = dense.weight.detach().clone()
    pooler_ids = {id(p) for p in head.pooler.parameters()}
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not pooler_ids & optimized and all(p.requires_grad for p in head.classifier.parameters())
    assert trainer.trainable_head_count == sum(p.numel() for p in head.classifier.parameters())
    trainer.fit()
    assert dense.weight.grad is None and torch.equal(dense.weight, before)
    assert not pooler_ids & {id(p) for p in trainer.optimizer.state}
    assert "head.pooler.0.weight" in trainer.method.adapter_state_dict(trainer.model)  # saved: a random draw
    trainable_cfg = tiny_config(tmp_path, *overrides, "model.head_pooler=trainable")
    trainable = build_trainer(trainable_cfg, RunDir(tmp_path))
    assert trainable.trainable_head_count == trainer.trainable_head_count + 32 * 32 + 32


def test_light_peft_restart_gives_a_fresh_optimizer_and_lr_schedule(tmp_path, monkeypatch):
    from peftlab.train import trainer as loop

    factors: list[float] = []
    set_lr = loop.set_lr
    monkeypatch.setattr(loop, "set_lr", lambda opt, factor: (factors.append(factor), set_lr(opt, factor)))
    overrides = ["method=light_peft", "method.estimation_steps=3", "schedule.max_steps=4"]
    cfg = tiny_config(tmp_path, *overrides, "schedule.warmup_ratio=0.5")
    assert cfg.method.restart_after_pruning  # the authors' protocol is the default
    trainer = build_trainer(cfg, RunDir(tmp_path))
    first_optimizer = trainer.optimizer
    trainer.fit()
    assert trainer.state.step == 3 + 4 and trainer.method.record["step"] == 3  # estimation is its own run
    # each run: warmup over ceil(0.5 x its steps), then linear decay to 0; the second starts at 0 again
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.5])
    assert trainer.optimizer is not first_optimizer
    adam_steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {4.0}  # moments from the 4 steps after pruning only, none carried over

    one_run = tiny_config(tmp_path, *overrides, "method.restart_after_pruning=false")
    trainer = build_trainer(one_run, RunDir(tmp_path))
    trainer.fit()
    assert trainer.state.step == 4 and trainer.method.record["step"] == 3
    head = trainer.model.head.classifier.weight
    assert float(trainer.optimizer.state[head]["step"]) == 4.0  # Adam moments kept across the pruning


def test_spsft_official_trainable_set_matches_the_arithmetic_on_tiny_deberta():
    # DeBERTaV3-base by the same arithmetic (docs/methods.md): word 128100 x 768 + relative 512 x 768
    # + 12 x (4 x 38 x 768 + 152 x 768 + 38 x 3072) rows + 26 LayerNorms x 38 x 2 + pooler/classifier
    # 592,130 = 103,570,618 = 103.57M as printed (5% rows rounded to 154 instead of 152: 103.58M)
    overrides = ["method=spsft_official", "model=tiny_deberta", "method.importance=l2"]
    cfg = compose_config([*overrides, "method.ratio=0.3", "method.norm_ratio=0.3"])
    model, _ = build_model(cfg.model, num_labels=2)
    build_method(cfg.method).setup(model)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 6  # embeddings, 2 per layer, the relative-position embeddings' norm
    rows_32, rows_64 = 8, 18  # 2 floor(0.3 x n / 2): 9.6 -> 8, 19.2 -> 18 (round would give 10 and 19)
    per_layer = 4 * rows_32 * 32 + rows_64 * 32 + rows_32 * 64  # q, k, v, attn-out; FFN in; FFN out
    expected = 30522 * 32 + 2 * 16 * 32 + 2 * per_layer + 6 * 8 * 2 + (32 * 2 + 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert {
        "backbone.embeddings.word_embeddings.weight",
        "backbone.encoder.rel_embeddings.weight",
    } <= trainable
    assert "backbone.embeddings.position_embeddings.weight" not in trainable
    paper_text = compose_config(
        ["method=spsft", "model=tiny_deberta", "method.importance=l2", "method.ratio=0.3"]
    )
    model, _ = build_model(paper_text.model, num_labels=2)
    build_method(paper_text.method).setup(model)
    rounded = 2 * (4 * 10 * 32 + 19 * 32 + 10 * 64) + 66  # round(9.6) = 10, round(19.2) = 19, head only
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == rounded


def _toy_spsft(**options):
    from peftlab.methods.base import CalibrationData
    from peftlab.methods.spsft.method import Spsft, SpsftConfig

    model = Toy()
    x, y, batches = toy_batches()
    method = Spsft(SpsftConfig(target_modules=["fc"], **options))
    method.prepare(model, CalibrationData(batches, torch.device("cpu"), num_labels=3))
    return model, x.numpy(), y.numpy(), method.scores["fc"].numpy()


def test_qm_taylor_scores_each_class_on_its_first_n_examples_with_fresh_gradients():
    model, x, y, scores = _toy_spsft(importance="qm_taylor", class_samples=2)
    first_two = [np.flatnonzero(y == label)[:2] for label in range(3)]  # in data order: 0,3 / 1,5 / 2,6
    assert [i.tolist() for i in first_two] == [[0, 3], [1, 5], [2, 6]]
    # each class from its own gradient: no accumulation from the classes scored before it
    per_class = np.stack([hand_taylor(model, x[i], y[i]) for i in first_two])
    expected = np.mean([np.quantile(per_class, q, axis=0) for q in np.linspace(0, 1, 11)], axis=0)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    _, _, _, every = _toy_spsft(importance="qm_taylor")  # null: every example of the batches
    assert not np.allclose(every, scores)


def test_taylor_without_the_bias_term():
    model, x, y, with_bias = _toy_spsft(importance="taylor")
    _, _, _, weights_only = _toy_spsft(importance="taylor", taylor_bias=False)
    gw, gb = hand_gradients(model, x, y)
    bias = model.backbone.fc.bias.detach().numpy()
    np.testing.assert_allclose(weights_only, np.abs(model.backbone.fc.weight.detach().numpy() * gw).sum(1))
    np.testing.assert_allclose(with_bias - weights_only, np.abs(bias * gb), rtol=1e-6)


def test_even_row_counts_round_down_as_the_official_code():
    from peftlab.blocks.selection import row_count

    assert [row_count(n, 0.05, even=True) for n in (768, 3072, 32)] == [38, 152, 2]
    assert [row_count(n, 0.05, even=False) for n in (768, 3072, 32)] == [38, 154, 2]


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_deberta"])
def test_spsft_official_preset_runs_saves_and_reloads(tmp_path, model_name):
    from peftlab.run.experiment import run_experiment

    run = tmp_path / "run"
    overrides = ["experiment=spsft_table3", "method=spsft_official", f"model={model_name}"]
    short = ["schedule.max_steps=3", "schedule.batch_size=8", "method.importance_batches=2"]
    results = run_experiment(tiny_config(run, *overrides, *short, "method.norm_ratio=0.25"))
    saved = json.loads((run / "adapter.json").read_text())["tensors"]
    assert any(k.endswith("LayerNorm.rows_index") for k in saved)  # norm features saved with their index
    assert any("word_embeddings" in k for k in saved)
    reloaded = run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run}"))
    assert reloaded["eval"]["loss"] == pytest.approx(results["final_eval"]["loss"], abs=1e-6)


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_deberta"])
def test_light_peft_official_lora_baseline_adapts_query_and_value(tmp_path, model_name):
    overrides = ["experiment=light_peft_lora_baseline", f"model={model_name}", "schedule.max_steps=2"]
    schedule = compose_config(["experiment=light_peft_lora_baseline"]).schedule
    assert (schedule.warmup_ratio, schedule.weight_decay, schedule.lr, schedule.name) == (
        0.06,
        0.1,
        3e-4,
        "light_peft_glue",
    )
    cfg = tiny_config(tmp_path, *overrides)  # schedule=quick, with the preset's warmup and decay
    assert (cfg.schedule.warmup_ratio, cfg.schedule.weight_decay) == (0.06, 0.1)
    trainer = build_trainer(cfg, RunDir(tmp_path))
    names = sorted({name.rsplit(".", 1)[-1] for name, _ in low_rank_layers(trainer.model)})
    assert names == (["query", "value"] if model_name == "tiny_bert" else ["query_proj", "value_proj"])
    assert len(low_rank_layers(trainer.model)) == 2 * cfg.model.config.num_hidden_layers
    trainer.fit()


def test_aflora_scripts_table_differs_from_table_7_where_the_scripts_do(tmp_path):
    def values(preset: str, task: str) -> tuple:
        cfg = compose_config([f"experiment={preset}", "method=aflora", f"task={task}"])
        return cfg.schedule.lr, cfg.schedule.head_lr, cfg.schedule.batch_size, cfg.method.rank

    scripts = {t: values("aflora_glue_scripts", t) for t in ("stsb", "rte", "mnli", "qnli", "qqp", "mrpc")}
    assert scripts == {
        "stsb": (2e-2, 2e-2, 64, 4),
        "rte": (1e-2, 4e-2, 64, 4),
        "mnli": (1e-2, 4e-3, 256, 1024),
        "qnli": (1e-3, 4e-3, 256, 4),
        "qqp": (4e-3, 4e-3, 256, 1024),
        "mrpc": (1e-2, 8e-2, 64, 4),
    }
    assert values("aflora_glue", "stsb") == (2e-3, 2e-2, 64, 4) and values("aflora_glue", "mnli")[3] == 4
    for model_name in ("tiny_bert", "tiny_deberta"):
        run = tmp_path / model_name
        run.mkdir()
        preset = ["experiment=aflora_glue_scripts", f"model={model_name}"]
        cfg = tiny_config(run, *preset, "schedule.max_steps=2")
        trainer = build_trainer(cfg, RunDir(run))
        trainer.fit()
        assert trainer.state.step == 2


def test_spsft_vision_schedule_is_cosine_per_epoch_down_to_1e9(tmp_path, monkeypatch):
    from peftlab.train import trainer as loop

    factors: list[float] = []
    set_lr = loop.set_lr
    monkeypatch.setattr(loop, "set_lr", lambda opt, factor: (factors.append(factor), set_lr(opt, factor)))
    sched = compose_config(["schedule=spsft_vision"]).schedule
    assert (sched.lr, sched.weight_decay, sched.batch_size, sched.min_lr) == (1e-4, 0.0, 64, 1e-9)
    overrides = ["schedule=spsft_vision", "schedule.epochs=3", "schedule.batch_size=16", "method=head"]
    trainer = build_trainer(tiny_config(tmp_path, *overrides), RunDir(tmp_path))
    trainer.fit()  # 32 examples: 2 steps an epoch
    floor = 1e-9 / 1e-4
    per_epoch = [floor + (1 - floor) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert factors == pytest.approx([f for f in per_epoch for _ in range(2)], rel=1e-9, abs=1e-12)
    assert per_epoch[1] == pytest.approx(0.75, abs=1e-5) and per_epoch[2] == pytest.approx(0.25, abs=1e-5)


def test_spsft_rows_of_kxk_grouped_convolutions_and_batchnorm_features():
    from peftlab.blocks.sparse_rows import SparseRowsLayer, SparseRowsNorm

    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9)
    for groups in (1, 2, 8):  # dense, grouped, depthwise: a row is one output channel's whole kernel
        base = torch.nn.Conv2d(8, 6 if groups < 8 else 8, 3, stride=2, padding=1, groups=groups).double()
        layer = SparseRowsLayer(base, torch.tensor([0, 3, 5]), train_bias=True).double()
        assert torch.equal(layer(x.double()), base(x.double()))  # zero-initialised: the base layer
        with torch.no_grad():
            layer.rows_weight.normal_()
            layer.rows_bias.normal_()
        out = layer(x.double())
        out.square().sum().backward()
        assert layer.rows_weight.grad is not None and base.weight.grad is None
        untouched = [c for c in range(base.out_channels) if c not in (0, 3, 5)]
        assert torch.equal(out[:, untouched], base(x.double())[:, untouched])
        layer.merge()  # W + M W_f: the rows' kernels added into the base kernels
        torch.testing.assert_close(base(x.double()), out.detach())
    norm = torch.nn.BatchNorm2d(8).eval()
    norm.running_mean.normal_()
    wrapped = SparseRowsNorm(norm, torch.tensor([1, 6]))
    with torch.no_grad():
        wrapped.rows_weight.fill_(0.5)
        wrapped.rows_bias.fill_(-1.0)
    expected = norm(x)
    expected[:, [1, 6]] += (
        0.5
        * (expected[:, [1, 6]] - norm.bias[[1, 6]].view(1, -1, 1, 1))
        / norm.weight[[1, 6]].view(1, -1, 1, 1)
        - 1.0
    )
    torch.testing.assert_close(wrapped(x), expected)


def test_spsft_vision_preset_trains_conv_and_norm_rows_of_efficientnet():
    cfg = compose_config(["method=spsft_vision", "model=tiny_efficientnet", "method.importance=l2"])
    model, _ = build_model(cfg.model, num_labels=3, head="image")
    convs = {n: m for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    build_method(cfg.method).setup(model)
    rows = sum(max(1, round(0.05 * c.out_channels)) * c.weight[0].numel() for c in convs.values())
    features = sum(2 * max(1, round(0.05 * n.num_features)) for n in norms)
    head = sum(p.numel() for p in model.head.parameters())
    assert any(c.groups > 1 for c in convs.values()) and any(c.kernel_size != (1, 1) for c in convs.values())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == rows + features + head
