"""Token ids cached on disk (``task.cache_tokens``), so a second run of the same task does not tokenize
again.

The key is a hash of everything the ids depend on: the examples themselves (their texts and labels, so
the data file's content, ``max_train_samples``, the sample seed and each example's prompt template are
in it), the tokenizer (class, name, its full serialised vocabulary and rules, special tokens, sides),
the task's settings that reach the tokenizer (max length, prompt template, token budgets) and
``FORMAT_VERSION``, which is raised whenever the way peftlab turns examples into ids changes. One
``.npz`` file per key (no pickle: loading runs no code), written to a temporary file and renamed, so a
reader never sees half a file; a file that does not load is ignored with a warning and rebuilt.
Folder: ``task.token_cache_dir``, else ``$PEFTLAB_TOKEN_CACHE``, else ``$XDG_CACHE_HOME/peftlab/tokens``
(``~/.cache/peftlab/tokens``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
Columns = dict[str, list[list[int]]]  # field name -> one id list per example


def cache_folder(configured: str | None) -> Path:
    """Where cached ids live: the configured folder, ``$PEFTLAB_TOKEN_CACHE``, or the user's cache."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("PEFTLAB_TOKEN_CACHE"):
        return Path(os.environ["PEFTLAB_TOKEN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peftlab" / "tokens"


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides a tokenizer's ids: its full serialisation (a fast tokenizer's vocabulary,
    merges, normaliser and templates; else its vocabulary), special tokens and truncation side."""
    digest = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # less its truncation and padding, which each call of the tokenizer sets anew from its arguments
        backend.no_truncation()
        backend.no_padding()
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8"))
    facts = [
        type(tokenizer).__name__,
        tokenizer.name_or_path,
        tokenizer.all_special_tokens,
        [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id],
        tokenizer.truncation_side,
        getattr(tokenizer, "add_bos_token", None),
        getattr(tokenizer, "add_eos_token", None),
        list(tokenizer.model_input_names),
    ]
    digest.update(json.dumps(facts, default=str).encode("utf-8"))
    return digest.hexdigest()


def cache_key(examples: Sequence, tokenizer: PreTrainedTokenizerBase, settings: dict) -> str:
    """The file name of these examples' ids: a hash of the examples, tokenizer and ``settings``."""
    digest = hashlib.blake2b(digest_size=20)
    head = {"format": FORMAT_VERSION, "tokenizer": tokenizer_identity(tokenizer), "settings": settings}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode("utf-8"))
    digest.update("\n".join(map(repr, examples)).encode("utf-8"))  # a dataclass repr: every field
    return digest.hexdigest()


def cached_columns(folder: Path | None, key: str, count: int, build: Callable[[], Columns]) -> Columns:
    """The ids stored under ``key`` in ``folder`` (None: no cache), else ``build()``'s, stored there."""
    if folder is None:
        return build()
    path = folder / f"{key}.npz"
    if path.exists():
        columns = _read(path, count)
        if columns is not None:
            log.info("token ids read from %s (task.cache_tokens)", path)
            return columns
    columns = build()
    _write(path, columns)
    return columns


def _read(path: Path, count: int) -> Columns | None:
    """The columns of ``path``, or None (with a warning) when it is unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [name.removesuffix(".offsets") for name in data.files if name.endswith(".offsets")]
            columns = {n: _unflatten(data[f"{n}.ids"], data[f"{n}.offsets"], count) for n in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("token cache %s is unreadable (%s); tokenizing again", path, err)
        return None
    if not columns:
        log.warning("token cache %s holds no columns; tokenizing again", path)
        return None
    return columns


def _unflatten(ids: np.ndarray, offsets: np.ndarray, count: int) -> list[list[int]]:
    ends = len(offsets) == count + 1 and offsets[0] == 0 and offsets[-1] == len(ids)
    if not ends or (np.diff(offsets) < 0).any():
        raise ValueError(f"offsets do not describe {count} sequences of {len(ids)} ids")
    flat = ids.tolist()
    bounds = offsets.tolist()
    return [flat[bounds[i] : bounds[i + 1]] for i in range(count)]


def _write(path: Path, columns: Columns) -> None:
    """Store ``columns`` atomically (temporary file, then rename); a failure only costs the cache."""
    arrays = {}
    for name, rows in columns.items():
        arrays[f"{name}.offsets"] = np.cumsum([0] + [len(r) for r in rows], dtype=np.int64)
        arrays[f"{name}.ids"] = np.fromiter((i for r in rows for i in r), dtype=np.int32)
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            temporary = handle.name
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    except OSError as err:
        log.warning("could not write the token cache %s (%s); the run goes on without it", path, err)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
