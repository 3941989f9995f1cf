"""Physical pruning of heads and FFN channels computes what the masked model computes (masks 0 on the
pruned units, 1 elsewhere), for BERT- and Llama-style (grouped KV) models, with and without LoRA on the
pruned layers; parameter counts follow the arithmetic; unknown architectures fail clearly."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from peftlab.blocks.lowrank import low_rank_layers
from peftlab.blocks.masks import StructureMasks
from peftlab.blocks.structure import blocks, num_channels, num_units, prune_channels, prune_heads
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.models import build_model

MODELS = {
    "bert": ["model=tiny_bert"],
    "deberta": ["model=tiny_deberta"],
    "deberta-own-pos-proj": ["model=tiny_deberta", "model.config.share_att_key=false"],
    "llama": ["model=tiny_llama"],
    "opt": ["model=tiny_opt"],
}


def tiny(model: str, lora: bool):
    torch.manual_seed(0)
    model, tokenizer = build_model(compose_config(MODELS[model]).model, num_labels=2)
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
        ["a short one", "a longer sentence with more words in it"], padding=True, return_tensors="pt"
    )
    return model, dict(enc)


def mask_then_prune(model, batch):
    """Mask alternate head units and keep a random third of the FFN channels (masks 0 / 1), then prune
    those units physically. Returns (masked, unmasked, pruned) logits, the blocks and the kept units."""
    backbone = model.backbone
    parts = blocks(backbone)
    masks = StructureMasks(backbone, parts)
    units, channels = masks.head.shape[1], masks.ffn.shape[1]
    keep_heads = [torch.tensor([u for u in range(units) if (u + i) % 2 == 0]) for i in range(len(parts))]
    keep_ffn = [
        torch.randperm(channels, generator=torch.Generator().manual_seed(i))[: channels // 3]
        for i in range(len(parts))
    ]
    with torch.no_grad():
        masks.head.zero_()
        masks.ffn.zero_()
        for i in range(len(parts)):
            masks.head[i, keep_heads[i]] = 1.0
            masks.ffn[i, keep_ffn[i]] = 1.0
    masks.apply_to(backbone)
    with torch.no_grad():
        masked = model(**batch).logits
    masks.remove()
    with torch.no_grad():
        unmasked = model(**batch).logits
    for block, heads, ffn in zip(parts, keep_heads, keep_ffn, strict=True):
        prune_heads(backbone, block, heads)
        prune_channels(backbone, block, ffn)
    with torch.no_grad():
        pruned = model(**batch).logits
    return masked, unmasked, pruned, parts, keep_heads, keep_ffn


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("lora", [False, True])
def test_pruned_model_equals_masked_model(model_name, lora):
    model, batch = tiny(model_name, lora)
    backbone = model.backbone
    params_before = sum(p.numel() for p in backbone.parameters())
    units, channels = num_units(backbone, blocks(backbone)[0]), num_channels(backbone, blocks(backbone)[0])
    masked, unmasked, pruned, parts, keep_heads, keep_ffn = mask_then_prune(model, batch)
    assert not torch.allclose(masked, unmasked)  # the masks did something
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-6)
    # parameter arithmetic: every removed head unit / channel takes its rows and columns with it
    config = backbone.config
    hidden, head_dim = config.hidden_size, parts[0].head_dim
    q_per_unit = parts[0].heads_per_unit * head_dim
    kv_per_unit = head_dim
    rank = 4 if lora else 0
    removed = 0
    for heads, ffn in zip(keep_heads, keep_ffn, strict=True):
        gone_units = units - heads.numel()
        q_cols = gone_units * q_per_unit
        kv = gone_units * kv_per_unit
        bias = 0 if model_name == "llama" else 1
        # q, k, v rows and o columns, with the LoRA B rows of q/k/v and A columns of o
        removed += q_cols * (hidden + bias) + 2 * kv * (hidden + bias) + q_cols * hidden
        removed += rank * (q_cols + 2 * kv + q_cols)
        extra = len(parts[0].per_head_extra)  # DeBERTa's own pos_key_proj / pos_query_proj, if any
        removed += extra * q_cols * (hidden + bias + rank)
        gone = channels - ffn.numel()
        n_in = 2 if model_name == "llama" else 1
        removed += n_in * gone * (hidden + bias) + gone * hidden + rank * gone * (n_in + 1)
    assert params_before - sum(p.numel() for p in backbone.parameters()) == removed
    assert [num_units(backbone, b) for b in parts] == [h.numel() for h in keep_heads]
    assert [num_channels(backbone, b) for b in parts] == [f.numel() for f in keep_ffn]


def test_unknown_architecture_and_empty_layers_fail_clearly():
    class Other(nn.Module):
        config = OmegaConf.create({"model_type": "gpt2"})

    with pytest.raises(ConfigError, match="does not know the architecture 'gpt2'; allowed: bert"):
        blocks(Other())
    model, _ = tiny("bert", lora=False)
    block = blocks(model.backbone)[0]
    with pytest.raises(ConfigError, match="every head"):
        prune_heads(model.backbone, block, torch.tensor([], dtype=torch.long))


def test_opt_language_model_layout_prunes_like_its_masks_and_is_targeted_by_name():
    """The causal LM's backbone is the OPT decoder itself (no ``decoder.`` prefix); pruned == masked on
    the LM logits; the methods' keywords pick OPT's attention and FFN layers."""
    from peftlab.blocks.targeting import match_targets

    torch.manual_seed(0)
    model, tokenizer = build_model(compose_config(["model=tiny_opt"]).model, 0, head="lm")
    model.eval()
    backbone = model.backbone
    parts = blocks(backbone)
    assert parts[1].qkv[0] == "layers.1.self_attn.q_proj" and parts[1].ffn_in == ("layers.1.fc1",)
    leaves = lambda names: {n.rsplit(".", 1)[-1] for n in names}  # noqa: E731
    assert leaves(match_targets(backbone, "ffn-linear")) == {"fc1", "fc2"}
    assert leaves(match_targets(backbone, "sublayer-outputs")) == {"out_proj", "fc2"}
    assert leaves(match_targets(backbone, "all-linear")) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
    }
    ids = tokenizer(["one sentence here", "and another"], padding=True, return_tensors="pt")
    masks = StructureMasks(backbone, parts)
    keep_heads, keep_ffn = torch.tensor([0, 3]), torch.arange(0, 128, 3)
    with torch.no_grad():
        masks.head.zero_()
        masks.ffn.zero_()
        masks.head[:, keep_heads] = 1.0
        masks.ffn[:, keep_ffn] = 1.0
    masks.apply_to(backbone)
    with torch.no_grad():
        masked = model(ids.input_ids, ids.attention_mask).logits
    masks.remove()
    for block in parts:
        prune_heads(backbone, block, keep_heads)
        prune_channels(backbone, block, keep_ffn)
    with torch.no_grad():
        pruned = model(ids.input_ids, ids.attention_mask).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    assert backbone.get_submodule("layers.0.self_attn").num_heads == 2
