"""Build backbone + tokenizer from a ``conf/model`` entry.

Sources:
- ``package``: weights shipped inside a pip package (offline here), located without importing it
  (a folder, or a GGUF file in it with ``gguf_file``, dequantised to fp32 by transformers);
- ``hub``: a Hugging Face hub id, for users with a network (clear error when offline);
- ``random``: a transformers config with random weights, for tests.

What is put on top of the backbone depends on the task (``Task.model_head``): a pooled classification
head (GLUE), the language-model head (generation tasks), or an image classification head.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from peftlab.errors import ConfigError
from peftlab.models.heads import SequenceClassifier
from peftlab.models.lm import CausalLM, Seq2SeqLM
from peftlab.models.vision import ImageClassifier, ImageSpec

log = logging.getLogger(__name__)

SOURCES = ("package", "hub", "random")
MODEL_HEADS = ("classifier", "lm", "image")  # what a task puts on the backbone (Task.model_head)
# Encoder-only families: no language-model head for generation tasks.
ENCODER_ONLY = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta"}
EFFICIENTNET = "efficientnet_lite0"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Module names of absolute position tables (BERT, RoBERTa: position_embeddings; BART: embed_positions).
POSITION_TABLES = ("position_embeddings", "embed_positions")
OFFLINE_MODELS = (
    "minilm (shipped MiniLM), smollm2_135m (shipped SmolLM2), efficientnet_lite0 (shipped), "
    "tiny_bert / tiny_llama / tiny_bart / tiny_vit / tiny_efficientnet (random, for tests)"
)
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
    if name == "float16":  # without a loss scaler fp16 gradients underflow and the loss turns NaN
        raise ConfigError(
            "model.dtype='float16' is not allowed: training in fp16 needs a loss scaler, which peftlab "
            "does not have yet; allowed: float32, bfloat16 (or float32 with schedule.precision=bf16)"
        )
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not allowed; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def position_limit(model: torch.nn.Module) -> int | None:
    """The longest input the model's absolute position tables can embed; None when it has none (rotary
    or relative positions: Llama, DeBERTa-v3, T5). RoBERTa's positions start after the pad index and
    BART's after an offset of 2, so those are taken off the table size."""
    limits = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_TABLES:
            start = getattr(module, "offset", 0)
            if module.padding_idx is not None:
                start = max(start, module.padding_idx + 1)
            limits.append(module.num_embeddings - start)
    return min(limits) if limits else None


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


def check_modality(cfg: DictConfig, head: str) -> None:
    """Image models for image tasks, text models for text tasks."""
    if cfg.get("modality", "text") == "image" and head != "image":
        raise ConfigError(f"model {cfg.name!r} is an image model; this task needs a text model ({head})")
    if head == "image" and cfg.get("modality", "text") != "image":
        raise ConfigError(
            f"model {cfg.name!r} is a text model; image tasks need an image model "
            "(efficientnet_lite0, tiny_efficientnet, tiny_vit, vit_base, deit_base)"
        )


def _auto_class(head: str, config: Any, cfg: DictConfig):
    """The transformers class to load for a task head: the bare backbone, or a model with its LM head."""
    if head != "lm":
        return AutoModel
    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM
    if config.model_type in ENCODER_ONLY:
        raise ConfigError(
            f"model {cfg.name!r} ({config.model_type}) is an encoder without a language-model head; "
            "generation tasks need a decoder or encoder-decoder model (smollm2_135m, tiny_llama, "
            "tiny_bart, llama2_7b, llama3_8b, bart_large)"
        )
    return AutoModelForCausalLM


def _load_pretrained(cfg: DictConfig, dtype: torch.dtype, head: str) -> tuple[torch.nn.Module, Any]:
    location = str(package_path(cfg.path)) if cfg.source == "package" else cfg.path
    extra = {"gguf_file": cfg.gguf_file} if cfg.get("gguf_file") else {}
    try:
        tokenizer = None if head == "image" else AutoTokenizer.from_pretrained(location, **extra)
        config = AutoConfig.from_pretrained(location, **extra)
        for key, value in dropout_overrides(cfg, config).items():
            setattr(config, key, value)
        auto = _auto_class(head, config, cfg)
        kwargs = {"add_pooling_layer": False} if head == "image" else {}
        backbone = auto.from_pretrained(location, config=config, dtype=dtype, **extra, **kwargs)
    except OSError as err:
        if cfg.source == "hub":
            raise ConfigError(
                f"model {cfg.name!r} could not be loaded from the Hugging Face hub id {location!r} "
                f"(no network, or not cached; set HF_HOME to a cache that has it). Models that run "
                f"offline here: {OFFLINE_MODELS}. Cause: {err}"
            ) from err
        raise
    return backbone, tokenizer


def _build_random(cfg: DictConfig, dtype: torch.dtype, head: str) -> tuple[torch.nn.Module, Any]:
    tokenizer = None if head == "image" else AutoTokenizer.from_pretrained(str(package_path(cfg.tokenizer)))
    overrides: dict[str, Any] = OmegaConf.to_container(cfg.config, resolve=True)  # type: ignore[assignment]
    if tokenizer is not None:
        overrides.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(cfg.architecture, **overrides)
    for key, value in dropout_overrides(cfg, config).items():
        setattr(config, key, value)
    auto = _auto_class(head, config, cfg)
    kwargs = {"add_pooling_layer": False} if head == "image" else {}
    return auto.from_config(config, **kwargs).to(dtype), tokenizer


def _build_efficientnet(cfg: DictConfig, dtype: torch.dtype) -> torch.nn.Module:
    from peftlab.models import efficientnet

    drop = cfg.get("drop_connect_rate", 0.0)
    if cfg.source == "random":
        backbone = efficientnet.EfficientNetLite0(
            blocks=efficientnet.TINY_BLOCKS, drop_connect_rate=drop, **cfg.get("config", {})
        )
    elif cfg.source == "package":
        backbone, _ = efficientnet.load_efficientnet_lite0(package_path(cfg.path))
        backbone.set_drop_connect_rate(drop)
    else:
        raise ConfigError(f"model {cfg.name!r}: EfficientNet-Lite0 comes from source=package or random")
    return backbone.to(dtype)


def image_spec(cfg: DictConfig) -> ImageSpec:
    """The input an image model expects: its resolution and normalisation."""
    return ImageSpec(int(cfg.image_size), tuple(cfg.image_mean), tuple(cfg.image_std))


def build_model(
    cfg: DictConfig, num_labels: int, head: str = "classifier"
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase | ImageSpec]:
    """Backbone from ``cfg.source`` plus what ``head`` asks for, on the CPU, and the model's input
    processor: its tokenizer (text) or its ``ImageSpec`` (images).

    ``classifier``: a fresh pooled head with ``num_labels`` outputs; ``lm``: the pretrained LM head
    (causal or encoder-decoder); ``image``: a fresh linear head on the pooled image features."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"model.source={cfg.source!r} is not allowed; allowed: {', '.join(SOURCES)}")
    if head not in MODEL_HEADS:
        raise ValueError(f"head={head!r}; allowed: {MODEL_HEADS}")
    dtype = resolve_dtype(cfg.dtype)
    check_modality(cfg, head)
    if cfg.get("architecture") == EFFICIENTNET:
        backbone, processor = _build_efficientnet(cfg, dtype), None
    elif cfg.source == "random":
        backbone, processor = _build_random(cfg, dtype, head)
    else:
        backbone, processor = _load_pretrained(cfg, dtype, head)
    model: torch.nn.Module
    if head == "classifier":
        model = SequenceClassifier(backbone, num_labels, pooling=cfg.pooling, dropout=cfg.head_dropout)
    elif head == "lm":
        model = CausalLM(backbone) if not backbone.config.is_encoder_decoder else Seq2SeqLM(backbone)
    else:
        features = getattr(backbone, "num_features", None) or backbone.config.hidden_size
        model = ImageClassifier(backbone, features, num_labels, dropout=cfg.head_dropout)
        processor = image_spec(cfg)
    model.head.to(dtype)
    log.info(
        "model %s: %s, %.2fM params",
        cfg.name,
        type(backbone).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, processor
