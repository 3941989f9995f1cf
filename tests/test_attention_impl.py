"""The models that fall back to eager attention, as docs/performance.md lists them, are exactly those
of conf/model whose transformers class has no SDPA (``_supports_sdpa``): the page cannot drift from the
installed transformers. The tiny models are built to check that a run really gets that attention."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModel

from peftlab.config import compose_config
from peftlab.models import build_model
from peftlab.models.build import package_path
from peftlab.models.shipped import is_shipped

# the model type of each checkpoint shipped in parts (peftlab/models/shipped.py): reading its config
# would assemble it first (Gemma's: a minute of dequantising); tests/test_models_base_scale.py loads them
SHIPPED_TYPES = {"all-mpnet-base-v2": "mpnet", "gemma-3-270m": "gemma3_text"}

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def documented_eager() -> set[str]:
    text = (ROOT / "docs" / "performance.md").read_text()
    table = re.search(r"<!-- eager-attention -->(.*?)<!-- /eager-attention -->", text, re.S)
    assert table, "docs/performance.md lost its eager-attention table"
    rows = [line.split("|")[1].strip(" `") for line in table.group(1).splitlines() if line.startswith("| `")]
    return set(rows)


def transformers_class(name: str):
    """The transformers class of conf/model/<name>.yaml (None: not a transformers model)."""
    cfg = compose_config([f"model={name}"]).model
    if cfg.architecture and cfg.architecture.startswith("efficientnet"):
        return None
    if cfg.architecture:
        config = AutoConfig.for_model(cfg.architecture)
    elif is_shipped(cfg.path):
        config = AutoConfig.for_model(SHIPPED_TYPES[cfg.path])
    else:
        gguf = {"gguf_file": cfg.gguf_file} if cfg.get("gguf_file") else {}
        config = AutoConfig.from_pretrained(package_path(cfg.path), **gguf)
    return AutoModel._model_mapping[type(config)]


def test_documented_eager_models_are_those_without_sdpa():
    classes = {name: transformers_class(name) for name in MODELS}
    eager = {name for name, cls in classes.items() if cls is not None and not cls._supports_sdpa}
    assert eager, "every model has SDPA now: the page should say so"
    assert documented_eager() == eager


@pytest.mark.parametrize("name", [m for m in MODELS if m.startswith("tiny_") and m != "tiny_efficientnet"])
def test_a_built_model_uses_sdpa_unless_documented_eager(name):
    head = "lm" if name in ("tiny_llama", "tiny_opt", "tiny_bart") else "classifier"
    head = "image" if name == "tiny_vit" else head
    model, _ = build_model(compose_config([f"model={name}"]).model, 0 if head == "lm" else 2, head)
    expected = "eager" if name in documented_eager() else "sdpa"
    assert model.config._attn_implementation == expected
