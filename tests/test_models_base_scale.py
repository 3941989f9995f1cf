"""The base-scale shipped models: MPNet (mpnet_base) and Gemma-3 (gemma3_270m).

Fast tests use random 1-2 layer models of the same architectures (MPNetConfig, Gemma3TextConfig): every
method's targets find the layout, head/FFN pruning computes what the masks compute (MPNet's shared
relative-position bias included), and each method family trains a step. The parts assembly is checked on
a small zip split in parts. The slow tests load the real weights (assembled into the model cache on first
use) and train one LoRA step.
"""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf
from test_structure import mask_then_prune

from peftlab.blocks.lowrank import low_rank_layers
from peftlab.blocks.structure import blocks, num_units, prune_heads
from peftlab.blocks.targeting import match_targets
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.models import build_model, shipped

TINY_MPNET = [
    "model=tiny_bert",
    "model.name=tiny_mpnet",
    "model.architecture=mpnet",
    "model.config.num_hidden_layers=1",
]
TINY_GEMMA3 = [
    "model=tiny_llama",
    "model.name=tiny_gemma3",
    "model.architecture=gemma3_text",
    "+model.config.head_dim=16",
]


def tiny(overrides: list[str], lora: bool = False):
    torch.manual_seed(0)
    model, tokenizer = build_model(compose_config(overrides).model, num_labels=2)
    if lora:
        build_method(OmegaConf.create({"name": "lora", "rank": 4, "target_modules": "all-linear"})).setup(
            model
        )
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, layer in low_rank_layers(model):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)
    model.eval()
    enc = tokenizer(
        ["a short one", "a longer sentence with more words"], ["x", "y z"], padding=True, return_tensors="pt"
    )
    return model, dict(enc)


def leaves(names: list[str]) -> list[str]:
    return [n.split("layer.0.", 1)[-1] for n in names]


def test_mpnet_targets_name_its_attention_and_ffn_layers():
    model, _ = tiny(TINY_MPNET)
    backbone = model.backbone
    assert type(backbone).__name__ == "MPNetModel"
    assert leaves(match_targets(backbone, ["query", "value"])) == ["attention.attn.q", "attention.attn.v"]
    assert leaves(match_targets(backbone, ["key", "value"])) == ["attention.attn.k", "attention.attn.v"]
    assert leaves(match_targets(backbone, "all-linear")) == [
        *(f"attention.attn.{p}" for p in "qkvo"),
        "intermediate.dense",
        "output.dense",
    ]
    assert leaves(match_targets(backbone, "sublayer-outputs")) == ["attention.attn.o", "output.dense"]
    assert leaves(match_targets(backbone, "ffn-linear")) == ["intermediate.dense", "output.dense"]
    (block,) = blocks(backbone)
    assert (block.attention, block.out, block.ffn_in, block.ffn_out) == (
        "encoder.layer.0.attention.attn",
        "encoder.layer.0.attention.attn.o",
        ("encoder.layer.0.intermediate.dense",),
        "encoder.layer.0.output.dense",
    )


def test_gemma3_targets_and_blocks_follow_the_llama_names():
    model, _ = tiny(TINY_GEMMA3)
    backbone = model.backbone
    assert backbone.config.model_type == "gemma3_text"
    assert {n.rsplit(".", 1)[-1] for n in match_targets(backbone, ["query", "value"])} == {"q_proj", "v_proj"}
    assert {n.rsplit(".", 1)[-1] for n in match_targets(backbone, "sublayer-outputs")} == {
        "o_proj",
        "down_proj",
    }
    block = blocks(backbone)[1]
    assert block.qkv[0] == "layers.1.self_attn.q_proj" and block.ffn_out == "layers.1.mlp.down_proj"
    assert block.head_dim == 16 and block.heads_per_unit == 2  # 4 query heads over 2 KV heads


@pytest.mark.parametrize("overrides", [TINY_MPNET, TINY_GEMMA3], ids=["mpnet", "gemma3"])
@pytest.mark.parametrize("lora", [False, True])
def test_pruned_model_equals_masked_model(overrides, lora):
    model, batch = tiny(overrides, lora)
    if "mpnet" in overrides[1]:  # the shared position bias must differ per head for the check to bite
        torch.nn.init.normal_(model.backbone.encoder.relative_attention_bias.weight, std=1.0)
    masked, unmasked, pruned, *_ = mask_then_prune(model, batch)
    assert not torch.allclose(masked, unmasked)
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-6)


def test_mpnet_pruning_twice_keeps_the_bias_of_the_surviving_heads():
    """Heads [0, 2, 3] then, of those, [1, 2]: the layer keeps original heads 2 and 3 and their bias."""
    model, batch = tiny(TINY_MPNET)
    backbone = model.backbone
    torch.nn.init.normal_(backbone.encoder.relative_attention_bias.weight, std=1.0)
    reference, reference_batch = tiny(TINY_MPNET)
    reference.load_state_dict(model.state_dict())
    (block,) = blocks(backbone)
    prune_heads(backbone, block, torch.tensor([0, 2, 3]))
    prune_heads(backbone, block, torch.tensor([1, 2]))
    prune_heads(reference.backbone, blocks(reference.backbone)[0], torch.tensor([2, 3]))
    assert num_units(backbone, block) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**reference_batch).logits)


METHODS = [
    ["method=lora"],
    ["method=dora"],
    ["method=elora_per_layer", "method.rank=64"],
    ["method=aflora"],
    ["method=adapter"],
    ["method=ia3"],
    ["method=spsft"],
    ["method=light_peft", "method.estimation_steps=null", "schedule.max_steps=4"],
    ["method=light_peft_adapter", "method.estimation_steps=null", "schedule.max_steps=4"],
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m[0].split("=")[1])
def test_every_method_family_trains_on_mpnet(tmp_path, method):
    from peftlab.run.experiment import run_experiment

    cfg = tiny_config(tmp_path, *TINY_MPNET, "task=mrpc", "schedule.max_steps=2", *method)
    result = run_experiment(cfg)
    assert torch.isfinite(torch.tensor(result["final_eval"]["loss"]))


def test_light_peft_on_a_single_kv_head_decoder_keeps_its_one_head_unit(tmp_path):
    """Gemma-3-270M has one KV head: head pruning has one unit per layer, which is never removed, while
    FFN channels are still pruned."""
    import json

    from peftlab.methods.light_peft.method import PRUNING_FILE
    from peftlab.run.experiment import run_experiment

    overrides = [*TINY_GEMMA3, "model.config.num_key_value_heads=1", "task=mrpc", "method=light_peft"]
    run_experiment(tiny_config(tmp_path, *overrides, "method.estimation_steps=null", "schedule.max_steps=4"))
    record = json.loads(next(tmp_path.rglob(PRUNING_FILE)).read_text())
    assert record["head_units_per_layer"] == 1
    assert record["heads"] == {"0": [0], "1": [0]}
    kept = sum(len(v) for v in record["ffn_channels"].values())
    assert 0 < kept < 2 * record["ffn_channels_per_layer"]


# -- parts assembly ---------------------------------------------------------------------------------------


def fake_parts(tmp_path, n: int = 3):
    """A zipped 'model' folder split into ``n`` part files."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("m/config.json", '{"model_type": "bert"}')
        zipped.writestr("m/weights.bin", bytes(range(256)) * 64)
    data = archive.read_bytes()
    size = -(-len(data) // n)
    parts = [tmp_path / f"model.zip.{i:03d}" for i in range(n)]
    for i, part in enumerate(parts):
        part.write_bytes(data[i * size : (i + 1) * size])
    return parts


def test_parts_are_assembled_once_into_the_cache(tmp_path, monkeypatch):
    parts = fake_parts(tmp_path)
    monkeypatch.setenv(shipped.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(shipped.SHIPPED, "fake", shipped.Shipped("fake", (), "zip", "m"))
    monkeypatch.setattr(shipped, "part_files", lambda s: parts)
    folder = shipped.model_folder("fake")
    assert folder == tmp_path / "cache" / "fake"
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fake"]  # no temporary left behind

    def no_parts(_):
        raise AssertionError("the cached folder must be used, not the parts")

    monkeypatch.setattr(shipped, "part_files", no_parts)
    assert shipped.model_folder("fake") == folder


def test_a_wrong_checksum_leaves_no_cached_folder(tmp_path, monkeypatch):
    parts = fake_parts(tmp_path)
    monkeypatch.setenv(shipped.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(shipped.SHIPPED, "fake", shipped.Shipped("fake", (), "zip", "m", sha256="0" * 64))
    monkeypatch.setattr(shipped, "part_files", lambda s: parts)
    with pytest.raises(ConfigError, match="sha256"):
        shipped.model_folder("fake")
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_part_packages_name_make_setup(monkeypatch):
    fake = shipped.Shipped("fake", (("no-such-dist-peftlab", "x/y"),), "zip", "m")
    with pytest.raises(ConfigError, match="make setup"):
        shipped.part_files(fake)


# -- the real weights -------------------------------------------------------------------------------------


@pytest.mark.slow  # loads 110M / 268M real parameters (assembled into the model cache on first use)
@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mpnet_base", "task=stsb", "schedule.max_seq_length=64"],
        [
            "model=gemma3_270m",
            "task=alpaca",
            "task.max_prompt_tokens=64",
            "task.max_target_tokens=64",
            "task.max_eval_samples=2",
            "task.max_new_tokens=4",
        ],
    ],
    ids=["mpnet_base", "gemma3_270m"],
)
def test_real_weights_train_a_lora_step(tmp_path, overrides):
    from peftlab.run.experiment import run_experiment

    cfg = tiny_config(
        tmp_path,
        "method=lora",
        "schedule.max_steps=1",
        "schedule.batch_size=4",
        "task.max_train_samples=8",
        "task.max_eval_samples=8",
        *overrides,
    )
    result = run_experiment(cfg)
    assert torch.isfinite(torch.tensor(result["final_eval"]["loss"]))
