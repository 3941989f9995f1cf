"""Generation tasks and language models: the wrappers compute what transformers' own models compute
(loss, greedy decoding), batches mask the prompt out of the loss, answers and ROUGE match hand-checked
values, and a few training steps + an evaluation run for gsm8k and cnn_dm."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli
from omegaconf import OmegaConf

from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.models import build_model
from peftlab.models.lm import IGNORE_INDEX, CausalLM, Seq2SeqLM
from peftlab.registry import TASKS
from peftlab.run.experiment import run_experiment
from peftlab.tasks.generation import TextPair, eos_token_id, read_jsonl
from peftlab.tasks.metrics import exact_match, gsm8k_answer, normalize_number, rouge, split_sentences

TINY_LM = ["progress_bar=false", "schedule=quick"]


def lm_and_tokenizer(model: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = compose_config([f"model={model}", "task=gsm8k"])
    model, tokenizer = build_model(cfg.model, 0, head="lm")
    return model.eval(), tokenizer


def hf_model(model: str, seed: int = 0):
    """The transformers model the wrapper is built from (same seed: same weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cfg = compose_config([f"model={model}"]).model
    _, tokenizer = lm_and_tokenizer(model, seed)
    overrides = OmegaConf.to_container(cfg.config)
    overrides.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(cfg.architecture, **overrides)
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_config(config).eval()


# -- the model wrappers ------------------------------------------------------------------------------------
def test_causal_lm_loss_equals_transformers_loss_on_target_tokens():
    model, _ = lm_and_tokenizer("tiny_llama")
    reference = hf_model("tiny_llama")
    assert isinstance(model, CausalLM)
    ids = torch.randint(5, 1000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # prompt
    labels[1, 9:] = IGNORE_INDEX  # padding
    ours = model(ids, mask, labels).loss
    theirs = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_causal_lm_greedy_decoding_equals_transformers_generate_with_left_padding():
    model, _ = lm_and_tokenizer("tiny_llama")
    reference = hf_model("tiny_llama")
    ids = torch.randint(5, 1000, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding of different lengths
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    steps = 6
    theirs = reference.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )[:, ids.shape[1] :]
    # an eos that no row writes: every row runs all steps
    ours = model.generate(ids, mask, steps, eos_token_id=29999)
    assert torch.equal(ours, theirs)
    # eos = the token row 0 writes second: row 0 stops and leaves the batch, the others decode on unchanged
    eos = int(theirs[0, 1])
    stopped = model.generate(ids, mask, steps, eos_token_id=eos)
    for row in range(3):
        expected = theirs[row].tolist()
        if eos in expected:
            cut = expected.index(eos) + 1
            expected = expected[:cut] + [eos] * (len(expected) - cut)
        assert stopped[row].tolist() == expected[: stopped.shape[1]]
    assert stopped[0, 1] == eos and (stopped[0, 2:] == eos).all()


def test_seq2seq_lm_loss_and_greedy_decoding_equal_transformers():
    model, _ = lm_and_tokenizer("tiny_bart")
    reference = hf_model("tiny_bart")
    assert isinstance(model, Seq2SeqLM)
    source = torch.randint(200, 1000, (2, 9))
    source_mask = torch.ones_like(source)
    source_mask[1, 6:] = 0
    labels = torch.randint(200, 1000, (2, 5))
    labels[1, 3:] = IGNORE_INDEX
    ours = model(source, source_mask, labels).loss
    theirs = reference(input_ids=source, attention_mask=source_mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    generated = reference.generate(
        input_ids=source,
        attention_mask=source_mask,
        max_new_tokens=5,
        do_sample=False,
        num_beams=1,
        eos_token_id=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        min_length=0,
        no_repeat_ngram_size=0,
    )[:, 1:]  # transformers returns the decoder start token first
    assert torch.equal(model.generate(source, source_mask, 5, eos_token_id=29999), generated)
    # eos = what row 0 writes second: row 0 leaves the batch (cache and encoder states), row 1 goes on
    eos = int(generated[0, 1])
    stopped = model.generate(source, source_mask, 5, eos_token_id=eos)
    expected = generated[1].tolist()
    if eos in expected:
        expected = expected[: expected.index(eos) + 1] + [eos] * (len(expected) - expected.index(eos) - 1)
    assert stopped[1].tolist() == expected[: stopped.shape[1]]
    assert stopped[0, 1] == eos and (stopped[0, 2:] == eos).all()


def test_encoder_model_is_refused_for_generation_tasks():
    with pytest.raises(ConfigError, match="encoder without a language-model head"):
        build_model(compose_config(["model=tiny_bert"]).model, 0, head="lm")


# -- batches -----------------------------------------------------------------------------------------------
def gsm8k_task(*overrides: str):
    cfg = compose_config(["task=gsm8k", *overrides])
    return TASKS.get("gsm8k")(cfg.task, None)


def test_causal_batches_train_only_on_the_target_and_end_it_with_eos():
    model, tokenizer = lm_and_tokenizer("tiny_llama")
    task = gsm8k_task()
    task.use_model(model)
    examples = [TextPair("what is two plus two", "four #### 4", "4"), TextPair("one", "1 #### 1", "1")]
    batch = next(iter(task.build_loader(examples, tokenizer, 2, 0)))
    eos = eos_token_id(tokenizer)
    for row, example in enumerate(examples):
        encoded = task.encode(example, tokenizer)
        prompt, target = encoded["prompt"], encoded["target"]
        length = len(prompt) + len(target)
        assert batch["input_ids"][row, :length].tolist() == prompt + target
        assert (batch["labels"][row, : len(prompt)] == IGNORE_INDEX).all()
        assert batch["labels"][row, len(prompt) : length].tolist() == target
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert target[-1] == eos
        # generation prompts are left-padded: the prompt ends at the last column
        assert batch["prompt_ids"][row, -len(prompt) :].tolist() == prompt
        assert batch["prompt_mask"][row].sum() == len(prompt)
    assert tokenizer.decode(task.encode(examples[0], tokenizer)["prompt"]).startswith("question :")


def test_long_sources_are_cut_but_the_template_is_kept():
    _, tokenizer = lm_and_tokenizer("tiny_llama")
    task = gsm8k_task("task.max_prompt_tokens=12", "task.max_target_tokens=4")
    encoded = task.encode(TextPair("word " * 50, "a b c d e f g", "x"), tokenizer)
    assert len(encoded["prompt"]) == 12 and len(encoded["target"]) == 4
    text = tokenizer.decode(encoded["prompt"])
    assert text.startswith("question :") and text.endswith("answer :")


def test_prompt_template_needs_one_source_slot():
    with pytest.raises(ConfigError, match="source"):
        gsm8k_task("task.prompt='no slot'")


# -- answers and metrics -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She pays 5 * 3 = <<5*3=15>>15 dollars.\n#### 15", "15"),
        ("#### 1,234", "1234"),
        ("The total is $18.00.", "18"),
        ("First 3, then 4.5 and finally -2", "-2"),
        ("#### 0.50", "0.5"),
        ("no number here", ""),
    ],
)
def test_gsm8k_answer_extraction(text, answer):
    assert gsm8k_answer(text) == answer


def test_exact_match_and_number_normalisation():
    assert normalize_number("$1,000.") == "1000"
    assert exact_match(["18", "3"], ["18", "4"]) == 0.5
    task = gsm8k_task()
    assert task.score(["so 2*9=18\n#### 18", "the answer is 7"], ["18", "8"]) == {"exact_match": 0.5}


def test_rouge_matches_hand_computed_values():
    # prediction and reference share 5 of 6 unigrams, 3 of 5 bigrams, and an LCS of 5 tokens
    scores = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
    # stemming: "cats"/"cat" and "running"/"run" match
    assert rouge(["cats running"], ["cat run"])["rouge1"] == pytest.approx(100.0)
    assert split_sentences("One. Two! Three?\nFour") == "One.\nTwo!\nThree?\nFour"


def test_malformed_jsonl_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: row lacks keys \['answer'\]"):
        read_jsonl(path, ("question", "answer"))
    path.write_text("{not json\n")
    with pytest.raises(ConfigError, match="bad.jsonl:1: not valid JSON"):
        read_jsonl(path, ("question",))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"question": "caf\xe9", "answer": "a"}\n', "bad.jsonl:2: not valid UTF-8: byte 0xe9 at column 18"),
        (b'{"question": "q", "answer": null}\n', "bad.jsonl:2: answer is null; expected a string"),
        (b'{"question": "q", "answer": 7}\n', "bad.jsonl:2: answer is 7; expected a string"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "a"}\n' + line)
    with pytest.raises(ConfigError, match=message):
        read_jsonl(path, ("question", "answer"))


def test_cnn_dm_local_split_is_deterministic_and_disjoint():
    cfg = compose_config(["task=cnn_dm"]).task
    task = TASKS.get("cnn_dm")(cfg, None)
    train, validation = task.load_split("train"), task.load_split("validation")
    assert (len(train), len(validation)) == (200, 50)
    assert not {e.source for e in train} & {e.source for e in validation}
    assert validation[0] == TASKS.get("cnn_dm")(cfg, None).load_split("validation")[0]


# -- runs --------------------------------------------------------------------------------------------------
def generation_run(tmp_path, task: str, model: str, *method: str):
    cfg = compose_config(
        [
            *TINY_LM,
            f"task={task}",
            f"model={model}",
            f"output_dir={tmp_path}",
            "task.max_train_samples=16",
            "task.max_eval_samples=6",
            "task.max_new_tokens=5",
            "task.max_prompt_tokens=48",
            "task.max_target_tokens=24",
            *method,
        ]
    )
    return run_experiment(cfg)


@pytest.mark.parametrize(
    ("task", "model", "method"),
    [
        ("gsm8k", "tiny_llama", ["method=lora", "method.target_modules=[q_proj,v_proj]"]),
        ("gsm8k", "tiny_llama", ["method=aflora_llm", "method.t_initial=0.25", "method.t_final=0.5"]),
        ("cnn_dm", "tiny_llama", ["method=spsft_llm", "method.rank=4", "method.importance_batches=2"]),
        ("cnn_dm", "tiny_bart", ["method=lora", "method.target_modules=[q_proj,v_proj]"]),
        ("gsm8k", "tiny_bart", ["method=aflora_llm"]),
    ],
)
def test_generation_tasks_train_and_evaluate(tmp_path, task, model, method):
    results = generation_run(tmp_path, task, model, *method)
    assert results["status"] == "completed" and results["steps"] == 4
    metrics = results["final_eval"]
    expected = {"exact_match"} if task == "gsm8k" else {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert expected <= set(metrics) and metrics["loss"] > 0
    assert results["tokens_per_s"] > 0 and metrics["generated_tokens_per_s"] > 0
    split = "test" if task == "gsm8k" else "validation"
    rows = [json.loads(line) for line in (tmp_path / f"predictions_{split}.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"prediction", "reference"} == set(rows[0])


def test_ffn_only_choices_map_onto_llama_and_bart_names():
    from peftlab.blocks.targeting import match_targets, module_role

    ffn_leaves = {"tiny_llama": {"gate_proj", "up_proj", "down_proj"}, "tiny_bart": {"fc1", "fc2"}}
    for model_name, ffn in ffn_leaves.items():
        model, _ = lm_and_tokenizer(model_name)
        names = match_targets(model.backbone, "ffn-linear")
        assert {n.rsplit(".", 1)[-1] for n in names} == ffn
        attention = [n for n in match_targets(model.backbone, "all-linear") if module_role(n) == "attention"]
        assert attention and all(n not in names for n in attention)


def test_generation_task_with_an_encoder_fails_before_training(tmp_path):
    proc = cli("task=gsm8k", "model=tiny_bert", "progress_bar=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "encoder without a language-model head" in proc.stdout + proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_head_only_is_refused_for_language_model_tasks(tmp_path):
    with pytest.raises(ConfigError, match="method head trains only the task head"):
        generation_run(tmp_path, "gsm8k", "tiny_llama", "method=head")


def test_aflora_trains_projections_only_in_the_llama_feed_forward_layers():
    from peftlab.methods.base import build_method

    model, _ = lm_and_tokenizer("tiny_llama")
    method = build_method(compose_config(["method=aflora_llm", "model=tiny_llama", "task=gsm8k"]).method)
    method.setup(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith(("lora_A", "lora_B"))]
    assert trained and all(".mlp." in n for n in trained)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and n.endswith("lora_A")]
    assert frozen and all(".self_attn." in n for n in frozen)


def test_t5_wrapper_matches_transformers_loss_and_decoding():
    """T5 keeps encoder and decoder on the LM itself and scales tied outputs: the wrapper does the same."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.for_model(
        "t5", vocab_size=300, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4, decoder_start_token_id=0
    )
    torch.manual_seed(0)
    reference = AutoModelForSeq2SeqLM.from_config(config).eval()
    model = Seq2SeqLM(reference).eval()
    source = torch.randint(2, 300, (2, 7))
    mask = torch.ones_like(source)
    labels = torch.randint(2, 300, (2, 4))
    labels[0, 3] = IGNORE_INDEX
    torch.testing.assert_close(
        model(source, mask, labels).loss, reference(input_ids=source, attention_mask=mask, labels=labels).loss
    )
    generated = reference.generate(
        input_ids=source, attention_mask=mask, max_new_tokens=4, do_sample=False, eos_token_id=None
    )[:, 1:]
    assert torch.equal(model.generate(source, mask, 4, eos_token_id=299999), generated)
