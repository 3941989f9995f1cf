"""Trained adapter + head weights as safetensors, with a JSON that says how to rebuild the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.errors import ConfigError, StorageError
from peftlab.methods.base import Method
from peftlab.run.folder import ADAPTER_META as META
from peftlab.run.folder import ADAPTER_WEIGHTS as WEIGHTS
from peftlab.run.folder import atomic_write, record, write_text_atomic


def save_adapter(
    out_dir: Path, method: Method, model_or_tensors: nn.Module | dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """adapter.safetensors + adapter.json: the method's tensors of ``model_or_tensors`` (a model, or its
    ``adapter_state_dict`` already taken, e.g. gathered from FSDP shards)."""
    if isinstance(model_or_tensors, nn.Module):
        model_or_tensors = method.adapter_state_dict(model_or_tensors)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_or_tensors.items()}
    record(out_dir, WEIGHTS, META)  # the run's own files: a later clear of the folder deletes them
    with atomic_write(out_dir / WEIGHTS) as tmp:
        try:
            save_file(tensors, str(tmp))
        except SafetensorError as err:  # e.g. "I/O error: No space left on device"
            raise StorageError(f"could not write {out_dir / WEIGHTS}: {err}") from err
    description = {
        **meta,
        "method": method.describe(),
        "num_tensors": len(tensors),
        "num_params": sum(t.numel() for t in tensors.values() if t.is_floating_point()),
        "tensors": {k: list(t.shape) for k, t in tensors.items()},
    }
    write_text_atomic(out_dir / META, json.dumps(description, indent=2) + "\n")
    return out_dir / WEIGHTS


def load_adapter(model: nn.Module, method: Method, run_dir: Path, label: str | None = None) -> dict[str, Any]:
    """Load saved tensors into a model that was built and attached like the saved one. ``label``: how
    errors name the folder (default ``load_from=<run_dir>``)."""
    label = label or f"load_from={run_dir}"
    weights = run_dir / WEIGHTS
    for name in (WEIGHTS, META):
        if not (run_dir / name).exists():
            raise ConfigError(f"{label}: no {name} there (was the run finished with save_adapter=true?)")
    try:
        meta = json.loads((run_dir / META).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{label}: {META} cannot be read ({err})") from None
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - a cut or garbled file: name it, whatever the reader says
        raise ConfigError(
            f"{label}: {WEIGHTS} cannot be read, it is cut short or not safetensors "
            f"({type(err).__name__}: {err})"
        ) from None
    try:
        method.restore(model, run_dir)
        method.load_adapter_state_dict(model, tensors)
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None
    return meta
