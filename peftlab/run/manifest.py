"""What a run folder's runs wrote there: ``.peftlab-manifest.json`` lists the top-level names a peftlab
run created (files and folders), and a clear deletes those only. Everything else in the folder is the
user's, or another tool's, and stays.

The file is read back with care: an entry must be a plain name inside the folder (no ``/``, no ``..``),
so a crafted manifest cannot point a clear at another folder. A manifest that cannot be read is refused,
never taken as empty. Writing it is ``RunDir``'s (run/folder.py), atomically, before the file it names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from peftlab.errors import ConfigError

MANIFEST = ".peftlab-manifest.json"
KEY = "peftlab_manifest"  # the format's version, in the file
_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")  # run/folder.py atomic_write's temp files


def read_manifest(folder: Path) -> set[str] | None:
    """The names the folder's manifest lists; None when there is none; ConfigError when it is unreadable."""
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if isinstance(data, dict) and KEY in data else None
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{path} cannot be read ({err}); it lists what peftlab wrote: {_HINT}") from None
    if not isinstance(entries, list) or not all(_plain(e) for e in entries):
        raise ConfigError(f"{path} is not a peftlab manifest (its entries must be plain names): {_HINT}")
    return set(entries)


_HINT = "move the folder's own files elsewhere and delete it, or choose another hydra.run.dir"


def _plain(name: object) -> bool:
    """A name inside the folder: never a path out of it."""
    return isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and not set("/\\") & set(name)


def recorded_entries(
    folder: Path, legacy: Callable[[str], bool] | None, replaced: Callable[[str], bool]
) -> set[str]:
    """The names ``folder``'s manifest lists. Without one, a folder an earlier peftlab wrote (``legacy``:
    whether a name is one a run writes) counts its run names and this process's log as recorded.
    ConfigError naming what a run would write over (``replaced``) that is not recorded: the user's files,
    or another tool's, are never deleted or replaced."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    recorded = read_manifest(folder)
    if recorded is None and legacy is not None:
        recorded = {n for n in names if legacy(n)} | own_logs(folder)
    recorded = recorded or set()
    foreign = sorted(n for n in names - recorded if replaced(n))
    if foreign:
        raise ConfigError(
            f"output dir {folder} holds {', '.join(foreign)}, which no peftlab run recorded ({MANIFEST}) "
            "and a run would write over; move them or choose another hydra.run.dir"
        )
    return recorded


def manifest_text(entries: set[str]) -> str:
    return json.dumps({KEY: 1, "entries": sorted(entries)}, indent=2) + "\n"


def delete_entries(folder: Path, entries: set[str]) -> list[str]:
    """Delete the listed names (a folder with what is in it) and the temp files of their interrupted
    saves; returns what was there."""
    removed = []
    for entry in sorted(folder.iterdir()):
        temp = _TEMP.match(entry.name)
        if entry.name in entries or (temp and temp["name"] in entries):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry.name)
    return removed


def is_legacy_run(folder: Path, results: str, config: str) -> bool:
    """A folder an earlier peftlab wrote without a manifest: its results.json names a peftlab version, or
    its config.yaml holds the run_id every started run saves."""
    try:
        data = json.loads((folder / results).read_text())
        if isinstance(data, dict) and "peftlab_version" in data:
            return True
    except (OSError, ValueError):
        pass
    try:
        saved = yaml.safe_load((folder / config).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and bool(saved.get("run_id")) and isinstance(saved.get("method"), dict)


def _log_files(folder: Path) -> list[str]:
    """This process's log files in ``folder`` (Hydra's ``peftlab.log``, opened for appending)."""
    files = [getattr(h, "baseFilename", None) for h in logging.getLogger().handlers]
    return [f for f in files if f and Path(f).parent.resolve() == folder.resolve()]


def own_logs(folder: Path) -> set[str]:
    return {Path(f).name for f in _log_files(folder)}


def truncate_logs(folder: Path) -> None:
    """Empty this process's log files in ``folder``, which still hold an earlier run's lines."""
    files = _log_files(folder)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "baseFilename", None) in files:
            handler.flush()
            os.truncate(handler.baseFilename, 0)
