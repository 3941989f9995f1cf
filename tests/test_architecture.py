"""Models built from their architecture alone (model.pretrained=false): the stored hub shapes give the
published parameter counts, layer truncation, meta-device materialisation equal to a plain build, the
borrowed tokenizer, the memory estimate and its refusal, and the family aliases of target names."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from peftlab.blocks.targeting import match_targets
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.models import architecture, build_model, footprint
from peftlab.models.footprint import Workload
from peftlab.registry import METHODS
from peftlab.run.experiment import run_experiment

# name -> (task head, published parameter count, tolerance): the count of the whole model as released
# (embeddings included; the LM head of a decoder counted once when tied).
PUBLISHED = {
    "deberta_v3_base": ("classifier", 184e6, 0.005),
    "roberta_large": ("classifier", 355e6, 0.005),
    "llama2_7b": ("lm", 6.74e9, 0.001),
    "llama3_8b": ("lm", 8.03e9, 0.001),
    "opt_1_3b": ("lm", 1.32e9, 0.005),
    "opt_6_7b": ("lm", 6.66e9, 0.005),
    "bart_large": ("lm", 406e6, 0.005),
    "vit_base": ("image", 86e6, 0.01),
}


def on_meta(name: str, head: str, *overrides: str) -> torch.nn.Module:
    cfg = compose_config([f"model={name}", "model.pretrained=false", "model.device=meta", *overrides])
    model, _ = build_model(cfg.model, num_labels=2, head=head)
    return model


def backbone_count(model: torch.nn.Module) -> int:
    parts = [model.backbone, getattr(model, "lm_head", None), getattr(model.head, "pooler", None)]
    return sum(p.numel() for p in {id(p): p for m in parts if m is not None for p in m.parameters()}.values())


@pytest.mark.parametrize("name", PUBLISHED)
def test_full_size_parameter_counts_equal_the_published_ones(name):
    head, published, tolerance = PUBLISHED[name]
    model = on_meta(name, head)
    assert all(p.device.type == "meta" for p in model.backbone.parameters())
    assert backbone_count(model) == pytest.approx(published, rel=tolerance)


def test_num_layers_keeps_the_first_blocks_of_every_stack():
    llama = on_meta("llama2_7b", "lm", "model.num_layers=2")
    assert len(llama.backbone.layers) == 2 and llama.config.num_hidden_layers == 2
    bart = on_meta("bart_large", "lm", "model.num_layers=1")
    assert len(bart.backbone.encoder.layers) == 1 and len(bart.backbone.decoder.layers) == 1


@pytest.mark.parametrize("value", [0, 13, True, "two"])
def test_num_layers_out_of_range_is_refused(value):
    with pytest.raises(ConfigError, match=r"model.num_layers=.* allowed an integer from 1 to 12"):
        on_meta("deberta_v3_base", "classifier", f"model.num_layers={value}")


def test_pretrained_must_be_a_boolean_and_random_models_have_no_weights():
    with pytest.raises(ConfigError, match="model.pretrained='yes' is not allowed; allowed: true, false"):
        build_model(compose_config(["model=tiny_bert", "model.pretrained=yes"]).model, 2)
    with pytest.raises(ConfigError, match="has no weights .*must be false"):
        build_model(compose_config(["model=tiny_bert", "model.pretrained=true"]).model, 2)


def test_hub_model_offline_error_names_pretrained_false(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"llama2_7b.*model.pretrained=false builds it"):
        build_model(compose_config(["model=llama2_7b"]).model, 0, head="lm")


@pytest.mark.parametrize(
    ("arch", "auto", "values"),
    [
        ("llama", AutoModel, {"num_key_value_heads": 2}),
        ("deberta-v2", AutoModel, {"relative_attention": True, "pos_att_type": ["p2c", "c2p"]}),
        ("bart", AutoModelForSeq2SeqLM, {"encoder_layers": 1, "decoder_layers": 1}),
    ],
)
def test_materialised_model_matches_a_plain_build(arch, auto, values):
    """Same buffers (rotary frequencies, position ids) and parameter statistics as transformers' own
    random build; tied weights stay tied."""
    shape = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}
    config = AutoConfig.for_model(arch, vocab_size=500, **shape, **values)
    plain = auto.from_config(config)
    built = architecture.materialise(
        architecture.build_empty(auto, config, torch.float32), torch.device("cpu")
    )
    plain_buffers = dict(plain.named_buffers())
    for name, buffer in built.named_buffers():
        torch.testing.assert_close(buffer, plain_buffers[name])
    for (name, p), q in zip(built.named_parameters(), plain.parameters(), strict=True):
        assert torch.isfinite(p).all(), name
        assert abs(float(p.detach().std()) - float(q.detach().std())) < 0.02, name
    if arch == "bart":
        assert built.lm_head.weight.data_ptr() == built.model.shared.weight.data_ptr()


def test_shared_weights_reuse_storage_but_not_parameters():
    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=100)  # fmt: skip
    with architecture.shared_weights():
        first, second = (
            architecture.materialise(
                architecture.build_empty(AutoModel, config, torch.float32), torch.device("cpu")
            )
            for _ in range(2)
        )
    a, b = first.layers[0].mlp.up_proj.weight, second.layers[0].mlp.up_proj.weight
    assert a.data_ptr() == b.data_ptr() and a is not b
    a.requires_grad_(False)
    assert b.requires_grad


def test_borrowed_tokenizer_is_mapped_into_the_model(caplog):
    cfg = compose_config(["model=roberta_large", "model.pretrained=false", "model.device=meta"])
    with caplog.at_level(logging.WARNING):
        model, tokenizer = build_model(cfg.model, num_labels=2)
    assert "BORROWED TOKENIZER" in caplog.text and "efficiency" in caplog.text
    config = model.config
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 101, 102)
    assert "token_type_ids" not in tokenizer.model_input_names  # RoBERTa has one token type
    assert len(tokenizer) <= config.vocab_size


def workload_of(method: str, checkpointing: bool = False) -> Workload:
    """One 512-token sequence, trained as ``method`` declares (``Method.trains_backbone_weights``, ...)."""
    cls = METHODS.get(method)
    return Workload(1, 512, cls.trains_backbone_weights, cls.backward_through_backbone, checkpointing)


def test_memory_estimate_is_logged_and_refuses_what_cannot_fit(monkeypatch, caplog):
    cfg = compose_config(["model=llama2_7b", "model.pretrained=false", "task=gsm8k"])
    with caplog.at_level(logging.INFO):
        empty = on_meta("llama2_7b", "lm")
    assert "memory estimate for model llama2_7b" in caplog.text
    monkeypatch.setattr(footprint, "available_memory", lambda device: 8 * footprint.GIB)
    with pytest.raises(ConfigError, match=r"needs ~.* GiB .* has 8.00 GiB available.*model.num_layers=N"):
        build_model(cfg.model, 0, head="lm", workload=Workload.from_config(cfg))
    lora, fft, head = (
        footprint.estimate(empty, empty.config, workload_of(m), True) for m in ("lora", "fft", "head")
    )
    bf16_base = 2 * sum(p.numel() for p in empty.parameters())
    assert fft.gradients == fft.weights == 2 * bf16_base and fft.optimizer == 2 * fft.gradients  # all fp32
    assert lora.weights == bf16_base + lora.gradients  # the base in bf16, the adapters in fp32
    assert lora.gradients < 0.05 * fft.gradients and lora.activations == fft.activations > 0
    # activation checkpointing keeps each block's input: far less than every block's activations
    kept = footprint.estimate(empty, empty.config, workload_of("lora", checkpointing=True), True)
    assert kept.activations < 0.3 * lora.activations
    assert head.gradients == head.optimizer == head.activations == 0 and head.weights == bf16_base


def test_workload_is_the_micro_batch_with_checkpointing():
    overrides = ["schedule.batch_size=32", "schedule.micro_batch_size=4"]
    overrides.append("schedule.activation_checkpointing=true")
    assert Workload.from_config(compose_config(overrides)) == Workload(4, 128, checkpointing=True)


def test_workload_of_a_generation_task_is_its_prompt_and_target_budget():
    cfg = compose_config(["task=gsm8k", "task.max_prompt_tokens=100", "task.max_target_tokens=28"])
    assert Workload.from_config(cfg) == Workload(cfg.schedule.batch_size, 128)


def test_bert_target_names_stand_for_the_family_names():
    deberta = on_meta("deberta_v3_base", "classifier", "model.num_layers=1")
    assert [n.rsplit(".", 1)[-1] for n in match_targets(deberta.backbone, ["query", "value"])] == [
        "query_proj",
        "value_proj",
    ]
    llama = on_meta("llama2_7b", "lm", "model.num_layers=1")
    assert {n.rsplit(".", 1)[-1] for n in match_targets(llama.backbone, ["query", "key", "value"])} == {
        "q_proj",
        "k_proj",
        "v_proj",
    }
    with pytest.raises(ConfigError, match=r"target_modules \['dense'\] match no layer"):
        match_targets(llama.backbone, ["query", "dense"])


# The acceptance commands of issue 16 (short budgets): a 1-layer build of each paper model trains two
# LoRA steps offline on the CPU.
ONE_LAYER_RUNS = {
    "deberta_v3_base": ["task=rte"],
    "roberta_large": ["task=rte"],
    "llama2_7b": [
        "task=gsm8k",
        "task.max_prompt_tokens=24",
        "task.max_target_tokens=8",
        "task.max_new_tokens=2",
    ],
    "llama3_8b": [
        "task=gsm8k",
        "task.max_prompt_tokens=24",
        "task.max_target_tokens=8",
        "task.max_new_tokens=2",
    ],
    "opt_1_3b": ["task=rte"],
    "bart_large": [
        "task=cnn_dm",
        "task.max_prompt_tokens=24",
        "task.max_target_tokens=8",
        "task.max_new_tokens=2",
    ],
    "vit_base": ["task=digits"],
}


@pytest.mark.slow  # paper widths and vocabularies (llama3_8b: two untied 128256 x 4096 matrices)
@pytest.mark.parametrize("name", ONE_LAYER_RUNS)
def test_one_layer_paper_model_trains_two_lora_steps_offline(tmp_path, name):
    overrides = [
        "method=lora",
        f"model={name}",
        "model.pretrained=false",
        "model.num_layers=1",
        "model.device=cpu",
        "schedule.max_steps=2",
        "schedule.batch_size=4",
        "schedule.max_seq_length=32",
        "task.max_train_samples=8",
        "task.max_eval_samples=4",
        "progress_bar=false",
        "save_adapter=false",
        f"output_dir={tmp_path}",
        *ONE_LAYER_RUNS[name],
    ]
    results = run_experiment(compose_config(overrides))
    assert results["status"] == "completed" and results["steps"] == 2
    assert results["trainable_params"]["end"] > 0
    assert results["final_eval"]["loss"] == pytest.approx(results["final_eval"]["loss"])  # finite, not NaN


def test_paper_model_without_weights_evaluates_few_examples_unless_asked(caplog):
    """Random weights at a paper's shapes: the evaluation is a check that it runs (16 examples, logged);
    an explicit task.max_eval_samples wins; the tiny random test models keep the task's own limits."""
    from peftlab.run.experiment import RANDOM_WEIGHTS_EVAL_SAMPLES, limit_random_weights_eval

    cfg = compose_config(["model=llama2_7b", "model.pretrained=false", "task=gsm8k"])
    with caplog.at_level(logging.WARNING, logger="peftlab.run.experiment"):
        limit_random_weights_eval(cfg)
    assert cfg.task.max_eval_samples == RANDOM_WEIGHTS_EVAL_SAMPLES == 16
    assert "evaluating on the first 16 examples" in caplog.text
    for overrides, expected in [
        (["model=llama2_7b", "model.pretrained=false", "task=gsm8k", "task.max_eval_samples=3"], 3),
        (["model=tiny_llama", "task=gsm8k"], None),
        (["model=minilm", "task=rte"], None),
    ]:
        cfg = compose_config(overrides)
        limit_random_weights_eval(cfg)
        assert cfg.task.max_eval_samples == expected, overrides


def test_workload_reads_what_the_method_trains():
    fft, head = (Workload.from_config(compose_config([f"method={m}"])) for m in ("fft", "head"))
    assert (fft.trains_backbone_weights, fft.backward_through_backbone) == (True, True)
    assert (head.trains_backbone_weights, head.backward_through_backbone) == (False, False)
