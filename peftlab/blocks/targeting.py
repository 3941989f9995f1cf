"""Which layers a method adapts: peft's matching rules, with an error when a pattern matches nothing."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from peftlab.errors import ConfigError

TargetSpec = str | Sequence[str]
ALL_LINEAR = "all-linear"  # every linear layer of the adapted module
FFN_LINEAR = "ffn-linear"  # every linear layer outside attention (the SPSFT paper's "FA" setting)
SUBLAYER_OUTPUTS = "sublayer-outputs"  # the projections that write attention / FFN back to the residual
KEYWORDS = (ALL_LINEAR, FFN_LINEAR, SUBLAYER_OUTPUTS)
# The BERT names of the attention projections as other families call them. A list entry that names no
# layer of the model stands for these, so one method config (``method=lora``: [query, value]) adapts the
# same projections of DeBERTa (query_proj, value_proj) and Llama/OPT/BART (q_proj, v_proj).
FAMILY_ALIASES = {
    "query": ("query_proj", "q_proj", "attn.q"),  # attn.q: MPNet's attention.attn.q
    "key": ("key_proj", "k_proj", "attn.k"),
    "value": ("value_proj", "v_proj", "attn.v"),
}


def _matches(name: str, key: str) -> bool:
    return name == key or name.endswith("." + key)


def is_pointwise_conv(layer: nn.Module) -> bool:
    """A 1x1, ungrouped, unpadded, undilated convolution: a linear map over channels per position."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.groups == 1
        and layer.padding in ((0, 0), "valid")
        and layer.dilation == (1, 1)
    )


def is_linear_like(layer: nn.Module) -> bool:
    """``nn.Linear`` or a pointwise ``nn.Conv2d``: the layers low-rank and sparse-row methods adapt."""
    return isinstance(layer, nn.Linear) or is_pointwise_conv(layer)


def match_targets(
    model: nn.Module, targets: TargetSpec, layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
) -> list[str]:
    """Names of the modules of ``layer_types`` in ``model`` selected by ``targets``.

    Only linear-like layers are candidates (``nn.Linear`` and 1x1 ``nn.Conv2d``, see ``is_linear_like``).
    As in peft: ``"all-linear"`` selects every such layer (methods adapt the backbone, so the
    classification head is never among them), ``"ffn-linear"`` those outside attention (see
    ``module_role``), ``"sublayer-outputs"`` the attention-output and FFN-output projections (see
    ``is_sublayer_output``); another string is a regex that must fullmatch the
    module name; a list selects names equal to an entry or ending in ``.<entry>`` (``query``, ``key``,
    ``value`` stand for the family's own names when the model has no such layer: ``FAMILY_ALIASES``).
    Unlike peft, every list entry must match something, so a typo in one of several keys fails loudly
    instead of silently training fewer layers.
    """
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, layer_types) and is_linear_like(module)
    ]
    if targets in KEYWORDS:
        if targets == FFN_LINEAR:
            candidates = [name for name in candidates if module_role(name) == "ffn"]
        elif targets == SUBLAYER_OUTPUTS:
            candidates = [name for name in candidates if is_sublayer_output(name)]
        if not candidates:
            raise ConfigError(f"target_modules={targets!r}: the model has no such {layer_types} layer")
        return candidates
    if isinstance(targets, str):
        selected = [name for name in candidates if re.fullmatch(targets, name)]
        if not selected:
            raise ConfigError(f"target_modules regex {targets!r} matches no layer; {_available(candidates)}")
        return selected
    keys = _with_family_aliases(list(targets), candidates)
    if not keys:
        raise ConfigError(f"target_modules is empty; {_available(candidates)}")
    unmatched = [key for key in keys if not any(_matches(name, key) for name in candidates)]
    if unmatched:
        raise ConfigError(f"target_modules {unmatched} match no layer; {_available(candidates)}")
    return [name for name in candidates if any(_matches(name, key) for key in keys)]


def _with_family_aliases(keys: list[str], candidates: list[str]) -> list[str]:
    """Each key that matches no candidate replaced by its ``FAMILY_ALIASES`` that do."""
    resolved: list[str] = []
    for key in keys:
        if any(_matches(name, key) for name in candidates):
            resolved.append(key)
            continue
        aliases = [a for a in FAMILY_ALIASES.get(key, ()) if any(_matches(n, a) for n in candidates)]
        resolved.extend(aliases or [key])
    return resolved


def _available(candidates: list[str]) -> str:
    leaves = sorted({name.rsplit(".", 1)[-1] for name in candidates})
    example = candidates[0] if candidates else "none"
    return (
        f"allowed: layer names or suffixes such as {leaves} (e.g. {example!r}), a regex string, "
        f"or one of {list(KEYWORDS)}"
    )


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` was."""
    model.set_submodule(name, new)


# Leaf names of attention projections across the families we support (BERT/RoBERTa, DeBERTa, Llama,
# BART/ViT); anything else that is adapted inside a block (intermediate/output dense, gate/up/down,
# fc1/fc2) is part of the feed-forward network.
ATTENTION_LEAVES = {
    "query",
    "key",
    "value",
    "query_proj",
    "key_proj",
    "value_proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "out_proj",
    "in_proj",
    "c_attn",
}
ROLES = ("attention", "ffn")


def module_role(name: str) -> str:
    """``attention`` or ``ffn``: the sub-block a linear layer belongs to, from its module name."""
    parts = name.split(".")
    if parts[-1] in ATTENTION_LEAVES or any(
        p in ("attention", "self_attn", "attn", "encoder_attn") for p in parts
    ):
        return "attention"
    return "ffn"


# Leaf names of the projections that close a sublayer (write back to the residual stream): Llama/OPT/BART
# attention out and FFN out, GPT-2's c_proj. BERT/RoBERTa/DeBERTa name both ``...output.dense``.
SUBLAYER_OUTPUT_LEAVES = {"o_proj", "out_proj", "down_proj", "fc2", "c_proj"}
SUBLAYER_OUTPUT_SUFFIXES = (".attention.attn.o",)  # MPNet's attention output


def is_sublayer_output(name: str) -> bool:
    """Whether a linear layer's output is added to the residual stream (attention or FFN output)."""
    return (
        name.rsplit(".", 1)[-1] in SUBLAYER_OUTPUT_LEAVES
        or name == "output.dense"
        or name.endswith((".output.dense", *SUBLAYER_OUTPUT_SUFFIXES))
    )
