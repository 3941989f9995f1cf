"""What every layer that wraps a frozen base layer implements: a small core, and opt-in pruning.

Saving, loading, merging and structural pruning ask the layer (as torchtune's ``AdapterModule`` and
peft's ``adapter_layer_names``); no code outside a layer's own file names its tensors. A layer owns
``base_layer`` (the frozen layer it wraps) and the tensors it lists in ``adapter_tensors``: trained
or not, everything needed to rebuild the trained function on a freshly attached model.
The parts are abstract base classes, and a layer class says which it implements: one that misses a
member fails when it is built, so no layer drops out of saving, merging, folding or pruning unnoticed.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from peftlab.errors import ConfigError


class AdapterLayer(nn.Module, metaclass=ABCMeta):
    """The core: a frozen ``base_layer`` plus an adapter that saves, reloads and merges itself."""

    base_layer: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.merged = False  # whether the adapter is folded into the base weight (forward = base cost)

    @abstractmethod
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors (by name relative to the layer) that a saved adapter must hold."""

    @abstractmethod
    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put saved tensors (names as in ``adapter_tensors``) into this freshly attached layer."""

    @abstractmethod
    def merge(self) -> None:
        """Fold the adapter into the base weight; forward then costs what the base layer costs."""

    @abstractmethod
    def unmerge(self) -> None:
        """Undo ``merge``: the base weight as it was, the adapter applied in forward again."""

    def folded(self) -> nn.Module:
        """The base layer with the adapter merged into it: what replaces this layer in a plain model."""
        self.merge()
        return self.base_layer


class PrunableAdapterLayer(AdapterLayer):
    """Opt-in structural pruning (Light-PEFT, head and FFN pruning through wrapped layers). ``keep_*``
    slice the layer consistently (base weight, bias and adapter tensors together), so a pruned model
    computes what the masked model computed. ``units`` are the adapter's own prunable entries: LoRA's
    ranks, a bottleneck adapter's hidden units, SPSFT's trained rows."""

    @property
    @abstractmethod
    def units(self) -> int:
        """How many units the adapter has (see ``keep_units``)."""

    @abstractmethod
    def keep_units(self, index: torch.Tensor) -> None:
        """Keep only the adapter's units ``index``."""

    @abstractmethod
    def keep_outputs(self, index: torch.Tensor) -> None:
        """Keep only output rows ``index`` of the base layer (and what the adapter holds of them)."""

    @abstractmethod
    def keep_inputs(self, index: torch.Tensor) -> None:
        """Keep only input columns ``index`` of the base layer (and what the adapter holds of them)."""

    @abstractmethod
    def removed(self) -> nn.Module:
        """The base layer as it was before the adapter was attached (what removing the adapter leaves)."""


class LowRankLayer(PrunableAdapterLayer):
    """A prunable adapter whose update goes through its units: a pair shaped like LoRA's (A, B), (units x
    in) and (out x units); Light-PEFT scores each unit from it."""

    @abstractmethod
    def low_rank_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) (or an adapter's (down, up) weights): (units x in) and (out x units)."""


def adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLayer]]:
    """Every adapter layer of ``model`` with its module name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AdapterLayer)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a saved adapter holds: each adapter layer's own tensors (a tensor shared by several layers
    once, under the first name), the task head, and every other trained parameter (full fine-tuning's
    weights, Light-PEFT's masks while they exist)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    inside: set[int] = set()
    for name, layer in adapter_layers(model):
        inside.update(id(p) for p in layer.parameters())
        for key, tensor in layer.adapter_tensors().items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                state[f"{name}.{key}"] = tensor.detach()
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    for name, param in model.named_parameters():
        if id(param) not in inside and (param.requires_grad or id(param) in head_ids):
            state[name] = param.detach()
    return state


def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load ``adapter_state_dict``'s output into a model attached like the saved one: each adapter
    layer takes its own tensors, the rest are copied by name; the saved names must be exactly the ones
    the attached model holds (a missing head or factor would leave its fresh random values in place),
    each with its shape."""
    expected = set(adapter_state_dict(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        parts = [f"lacks {len(missing)} tensors the method expects: {missing[:5]}"] if missing else []
        if unexpected:
            parts.append(f"holds {len(unexpected)} the attached model has not: {unexpected[:5]}")
        raise ConfigError(f"the saved adapter {'; it '.join(parts)}; was it saved by this method and config?")
    rest = dict(tensors)
    for name, layer in adapter_layers(model):
        prefix = name + "."
        own = {k[len(prefix) :]: rest.pop(k) for k in [k for k in rest if k.startswith(prefix)]}
        if own:
            layer.load_adapter_tensors(own)
    copy_into(model.state_dict(keep_vars=True), rest, "the rebuilt model")


def copy_into(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``saved`` into the same-named tensors of ``own``; a clear error for unknown names or shapes."""
    unknown = sorted(set(saved) - set(own))
    if unknown:
        raise ConfigError(f"saved tensors {unknown[:5]} do not exist in {where}")
    with torch.no_grad():
        for name, tensor in saved.items():
            if own[name].shape != tensor.shape:
                raise ConfigError(
                    f"saved {name} has shape {list(tensor.shape)}, {where} expects {list(own[name].shape)}"
                )
            own[name].copy_(tensor)


def merge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


def fold_adapters(model: nn.Module, kind: type[nn.Module] = nn.Module) -> int:
    """Replace every adapter layer (of ``kind``) by its base layer with the adapter merged into it: a
    plain model for inference or export. Returns how many were folded."""
    layers = [(n, m) for n, m in adapter_layers(model) if isinstance(m, kind)]
    for name, layer in layers:
        model.set_submodule(name, layer.folded())
    return len(layers)


# -- slicing helpers the layers share ----------------------------------------------------------------


def kept(param: nn.Parameter | None, dim: int, index: torch.Tensor) -> nn.Parameter | None:
    """``param`` restricted to ``index`` along ``dim``, as a new parameter with the same trainability."""
    if param is None:
        return None
    data = param.detach().index_select(dim, index.to(param.device)).clone()
    return nn.Parameter(data, requires_grad=param.requires_grad)


def sliced_linear(layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding only output rows ``rows`` and input columns ``cols`` of ``layer``."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            new.bias.copy_(bias if rows is None else bias.index_select(0, rows.to(bias.device)))
    new.requires_grad_(layer.weight.requires_grad)
    return new
