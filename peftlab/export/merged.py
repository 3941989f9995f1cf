"""``--to merged``: the adapters folded into the base weights (``Method.merge_into_base``), written with
``save_pretrained`` with the tokenizer, for ``from_pretrained``. A structure change the method made
(``Method.merged_structure``: pruned heads and FFN channels) goes into config.json under ``PRUNING_KEY``;
``load_merged`` rebuilds those shapes (``blocks.structure.keep_structure``) before loading the weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file
from torch import nn

from peftlab.blocks.structure import keep_structure
from peftlab.errors import ConfigError
from peftlab.export.head import write_head
from peftlab.export.layout import transformers_root

if TYPE_CHECKING:
    from peftlab.export import Rebuilt

log = logging.getLogger(__name__)

PRUNING_KEY = "peftlab_pruning"  # config.json of a pruned merged export: the kept heads and FFN channels


def write_merged(run: Rebuilt, out: Path) -> list[str]:
    """The adapters folded into the base (save_pretrained), the tokenizer, the head; returns notes."""
    try:
        run.method.merge_into_base(run.model)
    except ConfigError as err:
        raise ConfigError(f"method {run.method.name!r} cannot be exported merged: {err}") from None
    root = transformers_root(run.model)
    notes = []
    structure = run.method.merged_structure()
    if structure is not None:
        setattr(root.config, PRUNING_KEY, structure)
        notes.append(
            f"method {run.method.name} pruned heads and FFN channels: the weights have the pruned shapes; "
            "load with peftlab.export.load_merged(DIR) (transformers' from_config, the same pruning "
            f"from config.json's {PRUNING_KEY}, then the weights)"
        )
    root.save_pretrained(str(out))
    if hasattr(run.processor, "save_pretrained"):
        run.processor.save_pretrained(str(out))
    return notes + write_head(run.model, run.cfg, out)


def load_merged(folder: str | Path, **kwargs: Any) -> nn.Module:
    """A merged export as a transformers model: ``from_pretrained``, or, when pruned, ``from_config``
    pruned to the recorded shapes and then loaded (transformers configs have one width for all layers)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    record = getattr(config, PRUNING_KEY, None)
    if record is None:
        return AutoModel.from_pretrained(folder, **kwargs)
    model = AutoModel.from_config(config)
    keep_structure(model, record)
    state = load_file(str(Path(folder) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ConfigError(f"{folder}: weights {unexpected[:5]} do not exist in the rebuilt model")
    log.info("load_merged %s: pruned shapes rebuilt; not in the file (initialised): %s", folder, missing)
    return model.eval()
