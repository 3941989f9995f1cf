"""peftlab's task head beside an export: it is not a transformers module (it pools the last hidden state),
so peft and transformers have no place for it: ``head.safetensors`` + ``head.json``, read by ``load_head``."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.errors import ConfigError
from peftlab.models.heads import ClassificationHead


def write_head(model: nn.Module, cfg: DictConfig, out: Path) -> list[str]:
    """peftlab's task head beside the weights (peft and transformers have no place for a pooling head)."""
    head = model.head
    if not list(head.parameters()):
        return []
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()},
        str(out / "head.safetensors"),
    )
    description = {
        "class": f"{type(head).__module__}.{type(head).__name__}",
        "num_labels": int(model.num_labels),
        "pooling": getattr(head, "pooling", None),
        "dropout": float(cfg.model.get("head_dropout", 0.0)),
        "hidden_size": int(model.config.hidden_size) if hasattr(model.config, "hidden_size") else None,
        "input": "the base model's last_hidden_state and attention_mask",
    }
    (out / "head.json").write_text(json.dumps(description, indent=2) + "\n")
    return [
        "head.safetensors: peftlab's task head (pooling over the last hidden state, then a linear layer); "
        "peft and transformers have no place for it; peftlab.export.load_head(DIR) rebuilds it"
    ]


def load_head(folder: str | Path) -> ClassificationHead:
    """The classification head of an export: ``head(last_hidden_state, attention_mask) -> logits``."""
    folder = Path(folder)
    meta = json.loads((folder / "head.json").read_text())
    if not meta["class"].endswith("ClassificationHead"):
        raise ConfigError(
            f"{folder}: head {meta['class']} is not a classification head; load head.safetensors"
        )
    state = load_file(str(folder / "head.safetensors"))
    pooler = None
    if meta["pooling"] == "pooler" and "pooler.dense.weight" in state:  # the backbone's own BertPooler
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertPooler

        pooler = BertPooler(BertConfig(hidden_size=meta["hidden_size"]))
    head = ClassificationHead(
        meta["hidden_size"], meta["num_labels"], meta["pooling"], meta["dropout"], pooler
    )
    head.load_state_dict(state)
    return head.eval()
