"""``--to peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` in huggingface peft's naming, for
``PeftModel.from_pretrained(base, DIR)``. The method says what its adapter is in peft (``Method.peft_export``)
or why it has no peft form."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from peftlab.export.head import write_head
from peftlab.export.layout import base_location, transformers_root

if TYPE_CHECKING:
    from peftlab.export import Rebuilt

PeftForm = tuple[Any, dict[str, torch.Tensor]]  # peft's config object, tensors in peft's naming


def peft_form(run: Rebuilt) -> PeftForm:
    """The run's adapter as peft's config and tensors, naming its base model (ConfigError when the method
    has no peft form)."""
    config, tensors = run.method.peft_export(transformers_root(run.model))
    config.base_model_name_or_path = base_location(run.cfg)
    return config, tensors


def write_peft(run: Rebuilt, form: PeftForm, out: Path) -> list[str]:
    """adapter_config.json + adapter_model.safetensors (+ the head beside them); returns notes."""
    config, tensors = form
    config.save_pretrained(str(out))
    save_file(
        {k: v.to("cpu").contiguous().clone() for k, v in tensors.items()},
        str(out / "adapter_model.safetensors"),
    )
    return write_head(run.model, run.cfg, out)
