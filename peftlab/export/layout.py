"""Where an export's pieces come from: the transformers model others load and the base weights' location."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from peftlab.errors import ConfigError


def transformers_root(model: nn.Module) -> nn.Module:
    """The transformers model others load: the causal LM (with its LM head) or the backbone."""
    from transformers import PreTrainedModel

    root = getattr(model, "transformers_model", None) or model.backbone
    if not isinstance(root, PreTrainedModel):
        raise ConfigError(
            f"the backbone {type(root).__name__} is not a transformers model; it cannot be exported "
            "(allowed: transformers backbones, e.g. BERT, RoBERTa, DeBERTa, Llama, ViT)"
        )
    return root


def base_location(cfg: DictConfig) -> str | None:
    """Where a user finds the base weights: the package folder or hub id; None for random weights."""
    from peftlab.models.build import is_pretrained, package_path

    if not is_pretrained(cfg.model):
        return None
    return str(package_path(cfg.model.path)) if cfg.model.source == "package" else str(cfg.model.path)
