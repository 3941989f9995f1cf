"""Models built from their architecture alone (``model.pretrained=false``).

Step time, FLOPs and memory do not depend on the weights' values, so a paper's efficiency claim can be
checked at the paper's own shapes without its weights. The architecture values (those of the hub
``config.json``) are kept in ``conf/model/<name>.yaml`` (``architecture`` + ``config``); parameters are
created on the meta device, so nothing of a 7B model is allocated before the memory check, and are then
materialised once, on the CPU from the run's seed, with transformers' own initialisation (normal(0, 0.02)
for linear and embedding weights, ones/zeros for norms, the rotary and position buffers recomputed), and
moved to the target device: the random base is the same on every device.
``model.num_layers=N`` keeps the first N blocks (set on the config before anything is built).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from peftlab.errors import ConfigError

log = logging.getLogger(__name__)

# Config attributes that hold the block count, per model type (both stacks of an encoder-decoder).
LAYER_KEYS = {"bart": ("encoder_layers", "decoder_layers"), "t5": ("num_layers", "num_decoder_layers")}
DEFAULT_LAYER_KEYS = ("num_hidden_layers",)

# Within ``shared_weights()``: materialised tensors by architecture, reused by later builds.
_SHARED: dict[str, dict[str, torch.Tensor]] | None = None


def layer_keys(config: Any) -> tuple[str, ...]:
    """The config attributes that count this model's blocks."""
    keys = LAYER_KEYS.get(config.model_type, DEFAULT_LAYER_KEYS)
    missing = [key for key in keys if not isinstance(getattr(config, key, None), int)]
    if missing:
        raise ConfigError(
            f"model.num_layers: a {config.model_type!r} config has no integer {missing}; "
            f"known layer counts: {dict(LAYER_KEYS)}, otherwise {DEFAULT_LAYER_KEYS}"
        )
    return keys


def num_layers(config: Any) -> int:
    """Blocks of the model (an encoder-decoder's encoder and decoder together)."""
    return sum(int(getattr(config, key)) for key in layer_keys(config))


def keep_layers(config: Any, count: Any, model_name: str) -> None:
    """Set the config to its first ``count`` blocks (every stack of an encoder-decoder); None keeps all."""
    if count is None:
        return
    keys = layer_keys(config)
    full = min(int(getattr(config, key)) for key in keys)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= full:
        raise ConfigError(
            f"model.num_layers={count!r} for model {model_name!r}: allowed an integer from 1 to {full} "
            "(its number of blocks), or null for all of them"
        )
    for key in keys:
        setattr(config, key, count)
    layer_types = getattr(config, "layer_types", None)  # per-layer attention kinds in newer configs
    if isinstance(layer_types, list) and len(layer_types) > count:
        config.layer_types = layer_types[:count]


def build_empty(auto: Any, config: Any, dtype: torch.dtype, **kwargs: Any) -> nn.Module:
    """The model with every parameter and buffer on the meta device: no memory, no initialisation."""
    with torch.device("meta"):
        return auto.from_config(config, dtype=dtype, **kwargs)


def materialise(model: nn.Module, device: torch.device, seed: int = 0) -> nn.Module:
    """Allocate the meta model's tensors and initialise them as transformers does for a fresh model,
    on the CPU from ``seed`` alone (not the global RNG, not the device's generator), then move them to
    ``device``: a run, its export and its evaluation on any device rebuild the same random base.
    Within ``shared_weights()``, reuse the tensors of an earlier identical build."""
    key = _architecture_key(model, device, seed)
    if _SHARED is not None and key in _SHARED:
        _assign(model, _SHARED[key])
        log.info("materialised %s from the shared random weights", type(model).__name__)
        return model
    if device.type == "meta":  # parameter counting: nothing to allocate or initialise
        return model.to_empty(device=device)
    model.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.initialize_weights()  # type: ignore[operator]
    model.tie_weights()  # type: ignore[operator]
    model.to(device)
    if _SHARED is not None:
        _SHARED[key] = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return model


@contextlib.contextmanager
def shared_weights() -> Iterator[None]:
    """Within: models materialised from the same architecture (config, dtype, device, seed) share one set of
    random tensors (storage shared, parameters separate), so a benchmark initialises a 7B-shaped model's
    values once for all of its rows. Meant for measurements only: a row that updated base weights in
    place (full fine-tuning) would change them for every row."""
    global _SHARED
    previous, _SHARED = _SHARED, {}
    try:
        yield
    finally:
        _SHARED = previous


def _architecture_key(model: nn.Module, device: torch.device, seed: int) -> str:
    config = model.config  # type: ignore[attr-defined]
    dtype = next(model.parameters()).dtype
    return json.dumps([type(model).__name__, config.to_json_string(), str(dtype), str(device), seed])


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Point the meta model's parameters and buffers at shared tensors (new Parameter objects, so
    ``requires_grad`` stays per model), then re-tie tied weights."""
    for name, tensor in tensors.items():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        if leaf in module._parameters:
            requires_grad = module._parameters[leaf].requires_grad  # type: ignore[union-attr]
            module._parameters[leaf] = nn.Parameter(tensor.detach(), requires_grad=requires_grad)
        else:
            module._buffers[leaf] = tensor
    model.tie_weights()  # type: ignore[operator]
