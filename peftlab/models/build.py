"""Build backbone + tokenizer from a ``conf/model`` entry.

Sources:
- ``package``: weights shipped inside a pip package (offline here), located without importing it;
- ``hub``: a Hugging Face hub id, for users with a network (clear error when offline);
- ``random``: a transformers config with random weights, for tests.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from peftlab.errors import ConfigError
from peftlab.models.heads import SequenceClassifier

log = logging.getLogger(__name__)

SOURCES = ("package", "hub", "random")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_MODELS = "minilm (shipped MiniLM), tiny_bert (random, for tests)"
# Config attributes that hold the backbone's dropout in the transformers families we support.
DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "attention_dropout",
    "dropout",
    "activation_dropout",
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"model.device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but CUDA is not available; use model.device=auto or cpu")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not allowed; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def package_path(spec: str) -> Path:
    """``'pkg_name/sub/dir'`` -> the folder inside the installed package (the package is not imported)."""
    package, _, subdir = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"model files {spec!r} need the pip package {package!r}, which is not installed; run `make setup`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / subdir
    if not path.exists():
        raise ConfigError(f"model files {spec!r}: {path} does not exist in the installed package")
    return path


def dropout_overrides(cfg: DictConfig, config: Any) -> dict[str, float]:
    """``model.dropout`` set: that value for every dropout attribute the backbone config has."""
    if cfg.get("dropout") is None:
        return {}
    return {key: float(cfg.dropout) for key in DROPOUT_KEYS if hasattr(config, key)}


def _load_pretrained(cfg: DictConfig, dtype: torch.dtype) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    location = str(package_path(cfg.path)) if cfg.source == "package" else cfg.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        config = AutoConfig.from_pretrained(location)
        for key, value in dropout_overrides(cfg, config).items():
            setattr(config, key, value)
        backbone = AutoModel.from_pretrained(location, config=config, dtype=dtype)
    except OSError as err:
        if cfg.source == "hub":
            raise ConfigError(
                f"model {cfg.name!r} could not be loaded from the Hugging Face hub id {location!r} "
                f"(no network, or not cached; set HF_HOME to a cache that has it). Models that run "
                f"offline here: {OFFLINE_MODELS}. Cause: {err}"
            ) from err
        raise
    return backbone, tokenizer


def _build_random(cfg: DictConfig, dtype: torch.dtype) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(str(package_path(cfg.tokenizer)))
    overrides: dict[str, Any] = OmegaConf.to_container(cfg.config, resolve=True)  # type: ignore[assignment]
    overrides.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(cfg.architecture, **overrides)
    for key, value in dropout_overrides(cfg, config).items():
        setattr(config, key, value)
    return AutoModel.from_config(config).to(dtype), tokenizer


def build_model(cfg: DictConfig, num_labels: int) -> tuple[SequenceClassifier, PreTrainedTokenizerBase]:
    """Backbone from ``cfg.source`` plus a fresh head with ``num_labels`` outputs, on the CPU."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"model.source={cfg.source!r} is not allowed; allowed: {', '.join(SOURCES)}")
    dtype = resolve_dtype(cfg.dtype)
    if cfg.source == "random":
        backbone, tokenizer = _build_random(cfg, dtype)
    else:
        backbone, tokenizer = _load_pretrained(cfg, dtype)
    model = SequenceClassifier(backbone, num_labels, pooling=cfg.pooling, dropout=cfg.head_dropout)
    model.head.to(dtype)
    log.info(
        "model %s: %s, %.2fM params",
        cfg.name,
        type(backbone).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, tokenizer
