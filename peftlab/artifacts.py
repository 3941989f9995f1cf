"""Trained adapter + head weights as safetensors, with a JSON that says how to rebuild the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.errors import ConfigError
from peftlab.methods.base import Method

WEIGHTS = "adapter.safetensors"
META = "adapter.json"


def save_adapter(out_dir: Path, method: Method, model: nn.Module, meta: dict[str, Any]) -> Path:
    tensors = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in method.adapter_state_dict(model).items()
    }
    save_file(tensors, str(out_dir / WEIGHTS))
    description = {
        **meta,
        "method": method.describe(),
        "num_tensors": len(tensors),
        "num_params": sum(t.numel() for t in tensors.values() if t.is_floating_point()),
        "tensors": {k: list(t.shape) for k, t in tensors.items()},
    }
    (out_dir / META).write_text(json.dumps(description, indent=2) + "\n")
    return out_dir / WEIGHTS


def load_adapter(model: nn.Module, method: Method, run_dir: Path) -> dict[str, Any]:
    """Load saved tensors into a model that was built and attached like the saved one."""
    weights = run_dir / WEIGHTS
    if not weights.exists():
        raise ConfigError(
            f"load_from={run_dir}: no {WEIGHTS} there (was the run finished with save_adapter=true?)"
        )
    try:
        method.restore(model, run_dir)
        method.load_adapter_state_dict(model, load_file(str(weights)))
    except ConfigError as err:
        raise ConfigError(f"load_from={run_dir}: {err}") from None
    return json.loads((run_dir / META).read_text())
