"""Where local data sets live (configurable; on this machine the default finds ../shared/data), and the
hub data sets that users with a network get instead."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError

ENV_VAR = "PEFTLAB_DATA_ROOT"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root_candidates(configured: str | None) -> list[Path]:
    """The folders searched, in order: ``data_root`` if set, else $PEFTLAB_DATA_ROOT, else the
    ``shared/data`` beside the repository and beside the working directory."""
    if configured:
        return [Path(configured).expanduser().resolve()]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser().resolve()]
    candidates = [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return list(dict.fromkeys(path.resolve() for path in candidates))


def find_data_file(configured: str | None, relative: str) -> tuple[Path | None, list[Path]]:
    """The first existing ``root/relative``, and every path that was tried (for error messages)."""
    tried = [root / relative for root in data_root_candidates(configured)]
    return next((path for path in tried if path.is_file()), None), tried


def load_hub_dataset(path: str, name: str | None, split: str, context: str, hint: str) -> Any:
    """``datasets.load_dataset(path, name, split=split)``; any failure (no network, no cache) becomes one
    ConfigError: ``context`` (what was looked for and where), the cause, then ``hint`` (what to do)."""
    try:
        import datasets

        return datasets.load_dataset(path, name, split=split)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear message
        label = f"{path}/{name}" if name else path
        raise ConfigError(
            f"{context}, and the hub dataset {label} could not be loaded ({type(err).__name__}: "
            f"{str(err)[:200]}); {hint}"
        ) from err


def decode_problem(err: UnicodeDecodeError) -> str:
    """What is wrong with a line that is not UTF-8, for a ``file:line`` message."""
    return f"not valid UTF-8: byte {err.object[err.start]:#x} at column {err.start + 1}"
