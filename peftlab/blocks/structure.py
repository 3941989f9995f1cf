"""Where a backbone keeps its attention heads and FFN channels, and how to remove them physically.

Known layouts: BERT / RoBERTa (``encoder.layer.N.attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``), DeBERTa-v2/v3 (the same with
``{query,key,value}_proj``, plus ``pos_{key,query}_proj`` when keys are not shared), Llama-style decoders
(``layers.N.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``; Mistral and Qwen2 share it) and OPT
(``layers.N.self_attn.{q,k,v,out}_proj``, ``layers.N.fc1``/``fc2``), Gemma-3 (Llama's names, plus per-head
q/k norms that need no slicing) and MPNet (``encoder.layer.N.attention.attn.{q,k,v,o}``, BERT's FFN names,
and a relative-position bias per head shared by all layers, which each pruned layer slices to its heads).
In a Llama-style model with grouped KV heads, the unit of head pruning is a whole KV group (its key and
value head and the query heads that read them), so every remaining group keeps the same number of query
heads, as the attention code requires.

Pruning works on wrapped layers too: a ``PrunableAdapterLayer`` slices itself (``keep_outputs`` /
``keep_inputs``, ``blocks/protocol.py``), so this module never looks inside one; any other adapter layer
is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab.blocks.protocol import AdapterLayer, PrunableAdapterLayer, sliced_linear
from peftlab.errors import ConfigError

# query/key/value projection names of the encoder layouts (BERT, RoBERTa: query; DeBERTa-v2/v3: query_proj)
ENCODER_QKV = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
}
LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma3_text")
OPT = "opt"
MPNET = "mpnet"


@dataclass
class Block:
    """One transformer block's prunable parts, as module names relative to the backbone."""

    attention: str  # the module holding the head-count attributes
    qkv: tuple[str, str, str]
    out: str  # attention output projection
    ffn_in: tuple[str, ...]  # intermediate (BERT) | gate + up (Llama)
    ffn_out: str
    head_dim: int
    heads_per_unit: int  # query heads per prunable unit (1, or the KV group size)
    kv_heads_per_unit: int  # key/value heads per unit (1 in every layout here)
    per_head_extra: tuple[str, ...] = ()  # more projections with one slice per query head (DeBERTa's pos_*)


def model_type(backbone: nn.Module) -> str:
    return getattr(getattr(backbone, "config", None), "model_type", type(backbone).__name__)


def blocks(backbone: nn.Module) -> list[Block]:
    """The blocks of a known layout; a clear error for any other."""
    kind = model_type(backbone)
    config = backbone.config
    if kind in ENCODER_QKV:
        return _encoder_blocks(backbone, ENCODER_QKV[kind])
    if kind in LLAMA_LIKE:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        group = config.num_attention_heads // config.num_key_value_heads
        return [
            Block(
                attention=f"layers.{i}.self_attn",
                qkv=tuple(f"layers.{i}.self_attn.{p}_proj" for p in "qkv"),  # type: ignore[arg-type]
                out=f"layers.{i}.self_attn.o_proj",
                ffn_in=(f"layers.{i}.mlp.gate_proj", f"layers.{i}.mlp.up_proj"),
                ffn_out=f"layers.{i}.mlp.down_proj",
                head_dim=head_dim,
                heads_per_unit=group,
                kv_heads_per_unit=1,
            )
            for i in range(config.num_hidden_layers)
        ]
    if kind == OPT:
        return _opt_blocks(backbone)
    if kind == MPNET:
        return _mpnet_blocks(backbone)
    raise ConfigError(
        f"head/FFN pruning does not know the architecture {kind!r}; allowed: "
        f"{', '.join((*ENCODER_QKV, *LLAMA_LIKE, OPT, MPNET))}"
    )


def _mpnet_blocks(backbone: nn.Module) -> list[Block]:
    """MPNet: ``encoder.layer.N.attention.attn.{q,k,v,o}``, ``intermediate.dense``, ``output.dense``."""
    config = backbone.config
    return [
        Block(
            attention=f"encoder.layer.{i}.attention.attn",
            qkv=tuple(f"encoder.layer.{i}.attention.attn.{p}" for p in "qkv"),  # type: ignore[arg-type]
            out=f"encoder.layer.{i}.attention.attn.o",
            ffn_in=(f"encoder.layer.{i}.intermediate.dense",),
            ffn_out=f"encoder.layer.{i}.output.dense",
            head_dim=config.hidden_size // config.num_attention_heads,
            heads_per_unit=1,
            kv_heads_per_unit=1,
        )
        for i in range(config.num_hidden_layers)
    ]


def _opt_blocks(backbone: nn.Module) -> list[Block]:
    """OPT decoders: ``layers.N.self_attn.{q,k,v,out}_proj``, ``layers.N.fc1`` / ``fc2``. The classifier's
    backbone is ``OPTModel`` (layers under ``decoder.``); the language model's is the ``OPTDecoder``."""
    config = backbone.config
    prefix = "" if hasattr(backbone, "layers") else "decoder."
    result = []
    for i in range(config.num_hidden_layers):
        layer = f"{prefix}layers.{i}"
        result.append(
            Block(
                attention=f"{layer}.self_attn",
                qkv=tuple(f"{layer}.self_attn.{p}_proj" for p in "qkv"),  # type: ignore[arg-type]
                out=f"{layer}.self_attn.out_proj",
                ffn_in=(f"{layer}.fc1",),
                ffn_out=f"{layer}.fc2",
                head_dim=config.hidden_size // config.num_attention_heads,
                heads_per_unit=1,
                kv_heads_per_unit=1,
            )
        )
    return result


def _encoder_blocks(backbone: nn.Module, qkv: tuple[str, str, str]) -> list[Block]:
    config = backbone.config
    head_dim = (
        getattr(config, "attention_head_size", None) or config.hidden_size // config.num_attention_heads
    )
    result = []
    for i in range(config.num_hidden_layers):
        attention = f"encoder.layer.{i}.attention.self"
        extra = tuple(  # DeBERTa's relative-position projections of their own, when keys are not shared
            f"{attention}.{p}"
            for p in ("pos_key_proj", "pos_query_proj")
            if _has(backbone, f"{attention}.{p}")
        )
        result.append(
            Block(
                attention=attention,
                qkv=tuple(f"{attention}.{p}" for p in qkv),  # type: ignore[arg-type]
                out=f"encoder.layer.{i}.attention.output.dense",
                ffn_in=(f"encoder.layer.{i}.intermediate.dense",),
                ffn_out=f"encoder.layer.{i}.output.dense",
                head_dim=head_dim,
                heads_per_unit=1,
                kv_heads_per_unit=1,
                per_head_extra=extra,
            )
        )
    return result


def _has(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


def linear(backbone: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` at ``name``, looking through a wrapper (LoRA, adapter) to its base layer."""
    module = backbone.get_submodule(name)
    module = getattr(module, "base_layer", module)
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"{name} is a {type(module).__name__}, expected a linear layer")
    return module


def num_units(backbone: nn.Module, block: Block) -> int:
    """Prunable head units left in ``block`` (heads, or KV groups)."""
    return linear(backbone, block.qkv[1]).out_features // (block.head_dim * block.kv_heads_per_unit)


def num_channels(backbone: nn.Module, block: Block) -> int:
    return linear(backbone, block.ffn_out).in_features


# -- physical pruning ---------------------------------------------------------------------------------


def prunable(layer: nn.Module, name: str) -> PrunableAdapterLayer:
    """``layer`` if it is an adapter layer that can be sliced; a clear error for any other."""
    if not isinstance(layer, PrunableAdapterLayer):
        raise ConfigError(f"{name}: a {type(layer).__name__} cannot be pruned structurally")
    return layer


def prune_rows(backbone: nn.Module, name: str, keep: torch.Tensor) -> None:
    """Keep only output rows ``keep`` of the layer at ``name`` (an adapter layer slices itself)."""
    module = backbone.get_submodule(name)
    if isinstance(module, AdapterLayer):
        prunable(module, name).keep_outputs(keep)
    else:
        backbone.set_submodule(name, sliced_linear(module, keep, None))


def prune_columns(backbone: nn.Module, name: str, keep: torch.Tensor) -> None:
    """Keep only input columns ``keep`` of the layer at ``name`` (an adapter layer slices itself)."""
    module = backbone.get_submodule(name)
    if isinstance(module, AdapterLayer):
        prunable(module, name).keep_inputs(keep)
    else:
        backbone.set_submodule(name, sliced_linear(module, None, keep))


def unit_index(units: torch.Tensor, width: int) -> torch.Tensor:
    """Feature indices of the kept units (each ``width`` consecutive features)."""
    return (units[:, None] * width + torch.arange(width, device=units.device)).flatten()


def prune_heads(backbone: nn.Module, block: Block, keep_units: torch.Tensor) -> None:
    """Keep only head units ``keep_units`` of ``block``: q rows, k/v rows, output-projection columns;
    the attention module's head counts follow."""
    keep_units = keep_units.sort().values
    if keep_units.numel() == 0:
        raise ConfigError(f"pruning would remove every head of {block.attention}; keep at least one")
    q_width = block.heads_per_unit * block.head_dim
    kv_width = block.kv_heads_per_unit * block.head_dim
    q_keep = unit_index(keep_units, q_width)
    prune_rows(backbone, block.qkv[0], q_keep)
    for name in block.per_head_extra:
        prune_rows(backbone, name, q_keep)
    for name in block.qkv[1:]:
        prune_rows(backbone, name, unit_index(keep_units, kv_width))
    prune_columns(backbone, block.out, q_keep)
    attention = backbone.get_submodule(block.attention)
    heads = keep_units.numel() * block.heads_per_unit
    for attr, value in (
        ("num_attention_heads", heads),  # BERT
        ("all_head_size", heads * block.head_dim),
        ("num_heads", heads),  # Llama-style, where present
        ("num_key_value_heads", keep_units.numel() * block.kv_heads_per_unit),
    ):
        if hasattr(attention, attr):
            setattr(attention, attr, value)
    if model_type(backbone) == MPNET:
        _keep_bias_heads(attention, keep_units)


def _keep_bias_heads(attention: nn.Module, keep: torch.Tensor) -> None:
    """MPNet adds one relative-position bias per head, computed once for all layers: a layer with fewer
    heads reads only its kept heads' bias (a pre-hook slices it; repeated pruning composes the indices)."""
    kept = getattr(attention, "kept_bias_heads", None)
    if kept is None:
        attention.register_buffer("kept_bias_heads", keep.clone(), persistent=False)
        attention.register_forward_pre_hook(_slice_position_bias, with_kwargs=True)
    else:
        attention.kept_bias_heads = kept[keep.to(kept.device)]


def _slice_position_bias(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    heads = module.kept_bias_heads
    if len(args) > 2 and args[2] is not None:  # MPNetAttention passes (hidden, mask, position_bias)
        args = (*args[:2], args[2].index_select(1, heads.to(args[2].device)), *args[3:])
    elif (bias := kwargs.get("position_bias")) is not None:
        kwargs["position_bias"] = bias.index_select(1, heads.to(bias.device))
    return args, kwargs


def prune_channels(backbone: nn.Module, block: Block, keep: torch.Tensor) -> None:
    """Keep only FFN channels ``keep``: rows of the input projection(s), columns of the output one."""
    keep = keep.sort().values
    if keep.numel() == 0:
        raise ConfigError(f"pruning would remove every FFN channel of {block.ffn_out}; keep at least one")
    for name in block.ffn_in:
        prune_rows(backbone, name, keep)
    prune_columns(backbone, block.ffn_out, keep)


def keep_structure(backbone: nn.Module, record: dict, structure: list[Block] | None = None) -> None:
    """Prune ``backbone`` to a recorded structure: ``{"heads": {block: kept units}, "ffn_channels":
    {block: kept channels}}`` (block indices as strings, JSON's keys): Light-PEFT's pruning and a merged
    export's reload. ``structure``: the blocks already found (default: ``blocks(backbone)``)."""
    for i, block in enumerate(blocks(backbone) if structure is None else structure):
        # host index lists: the slicing moves them to each weight's device
        prune_heads(backbone, block, torch.tensor(record["heads"][str(i)], dtype=torch.long, device="cpu"))
        channels = torch.tensor(record["ffn_channels"][str(i)], dtype=torch.long, device="cpu")
        prune_channels(backbone, block, channels)
