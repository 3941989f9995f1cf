"""Export a finished run so that others load it without peftlab.

    python -m peftlab.export RUN_DIR --to peft     [--out DIR]   # default: RUN_DIR/export/peft/
    python -m peftlab.export RUN_DIR --to merged   [--out DIR]   # default: RUN_DIR/export/merged/

``--out`` must be new or empty; a previous export there is replaced with ``--force`` (nothing else is:
not the run folder or a folder above it, not a folder of other files).

``peft`` (``export/peft.py``): ``adapter_config.json`` + ``adapter_model.safetensors`` in huggingface peft's
naming, for ``PeftModel.from_pretrained(base, DIR)``, as the method gives them (``Method.peft_export``).
``merged`` (``export/merged.py``): the adapters folded into the base weights, written with ``save_pretrained``
with the tokenizer, for ``from_pretrained``; a method's structure change (``Method.merged_structure``:
pruned shapes) is recorded in config.json and rebuilt by ``load_merged``. peftlab's classification head is
not a transformers module (it pools the last hidden state), so it goes beside the weights
(``export/head.py``: ``head.safetensors`` + ``head.json``, ``load_head``).
Every export writes ``export.json``: the source run, the base model, how to load it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from peftlab.errors import ConfigError
from peftlab.export.head import load_head, write_head
from peftlab.export.layout import base_location, transformers_root
from peftlab.export.merged import PRUNING_KEY, load_merged, write_merged
from peftlab.export.peft import peft_form, write_peft
from peftlab.methods.base import Method
from peftlab.run.lock import file_mode

__all__ = [
    "FORMATS",
    "PRUNING_KEY",
    "Rebuilt",
    "base_location",
    "export",
    "load_head",
    "load_merged",
    "main",
    "rebuild",
    "transformers_root",
    "write_head",
]

FORMATS = ("peft", "merged")


@dataclass
class Rebuilt:
    """A finished run's model with its adapter loaded, as eval_only rebuilds it (no training data)."""

    cfg: DictConfig
    model: nn.Module
    method: Method
    processor: Any  # tokenizer, or ImageSpec for image models
    run_dir: Path


def rebuild(run_dir: Path) -> Rebuilt:
    """Model + method of a completed run with its saved adapter, in eval mode on the CPU."""
    from peftlab.run.finished import load_finished_run

    def on_cpu(cfg: DictConfig) -> DictConfig:
        cfg.model.device = "cpu"
        return cfg

    run = load_finished_run(run_dir, on_cpu, label=str(run_dir))
    return Rebuilt(run.config.raw, run.model.eval(), run.method, run.processor, run_dir)


# -- the command -----------------------------------------------------------------------------------------
MARKER_KEY = "peftlab_export"  # in every export's export.json: what ``--force`` may replace


def export(run_dir: str | Path, to: str, out: str | Path | None = None, force: bool = False) -> Path:
    """Export ``run_dir`` as ``to`` (peft | merged) into ``out`` (default ``RUN_DIR/export/<to>``),
    written into a temp folder and renamed into place, so a failed export leaves nothing half-written.
    A non-empty ``out`` is replaced only when it holds a previous export and ``force`` is given."""
    if to not in FORMATS:
        raise ConfigError(f"--to {to!r} is not allowed; allowed: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / "export" / to
    check_target(run_dir, target, force)
    run = rebuild(run_dir)
    form = peft_form(run) if to == "peft" else None  # a refusal comes before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        notes = write_peft(run, form, tmp) if form is not None else write_merged(run, tmp)
        (tmp / "export.json").write_text(json.dumps(describe(run, to, notes), indent=2) + "\n")
        for written in tmp.rglob("*"):  # safetensors creates its files 0600: give them the umask's mode
            if written.is_file() and not written.is_symlink():
                os.chmod(written, file_mode())
        if target.exists():
            check_target(run_dir, target, force)  # still a previous export, nothing else
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_target(run_dir: Path, target: Path, force: bool) -> None:
    """Refuse an output folder whose replacement would delete what is not a previous export: the run
    folder or a folder above it, a file, a folder of other files; a previous export only with ``force``."""
    where = f"--out {target}"
    run, out = run_dir.resolve(), target.resolve()
    if run == out or out in run.parents:
        raise ConfigError(
            f"{where} is the run folder or holds it; choose a folder outside {run_dir} "
            f"(or leave --out out: {run_dir / 'export'}/<format>)"
        )
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise ConfigError(f"{where} is a file or a link, not a folder; choose a new or empty folder")
    if not any(target.iterdir()):
        return
    if not is_export(target):
        raise ConfigError(
            f"{where} holds files that are not a peftlab export; choose a new or empty folder "
            "(--force replaces only a previous export)"
        )
    if not force:
        raise ConfigError(f"{where} holds a previous export; pass --force to replace it")


def is_export(folder: Path) -> bool:
    """Whether ``folder`` was written by ``export`` (its export.json carries the marker key)."""
    try:
        return MARKER_KEY in json.loads((folder / "export.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def describe(run: Rebuilt, to: str, notes: list[str]) -> dict[str, Any]:
    """export.json: where the export came from and how to load it (the base class names the key layout:
    a causal LM's keys start with ``model.``, a bare encoder's do not)."""
    base = base_location(run.cfg)
    cls = type(transformers_root(run.model)).__name__
    load = {
        "peft": f"PeftModel.from_pretrained({cls}.from_pretrained(BASE), DIR)",
        "merged": f"{cls}.from_pretrained(DIR) (pruned: peftlab.export.load_merged(DIR))",
    }[to]
    if base is None:
        notes = [*notes, f"the base model {run.cfg.model.name!r} has random weights (no checkpoint to name)"]
    inputs = None
    if dataclasses.is_dataclass(run.processor):  # image models: resolution and normalisation
        inputs = dataclasses.asdict(run.processor)
    return {
        MARKER_KEY: 1,
        "format": to,
        "run": str(run.run_dir),
        "method": run.method.name,
        "model": run.cfg.model.name,
        "task": run.cfg.task.name,
        "base_model": base,
        "base_class": cls,
        "load": load,
        "image_inputs": inputs,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a completed run folder (config.yaml, adapter.safetensors)")
    parser.add_argument("--to", required=True, choices=FORMATS)
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export/<format>/)")
    parser.add_argument("--force", action="store_true", help="replace a previous export in the output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        path = export(args.run_dir, args.to, args.out, args.force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} as {args.to}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
