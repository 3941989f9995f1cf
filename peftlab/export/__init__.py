"""Export a finished run so that others load it without peftlab.

    python -m peftlab.export RUN_DIR --to peft     [--out DIR]   # default: RUN_DIR/export/peft/
    python -m peftlab.export RUN_DIR --to merged   [--out DIR]   # default: RUN_DIR/export/merged/

``peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` in huggingface peft's naming, for
``PeftModel.from_pretrained(base, DIR)``: LoRA (rsLoRA, DoRA, PiSSA as a rank-2r LoRA on the original base,
as peft converts it) and ELoRA as peft's VeRA (its saved shared pair). ``merged``: the adapters folded into
the base weights (``fold_adapters``), written with ``save_pretrained`` with the tokenizer, for
``from_pretrained``; Light-PEFT's pruned shapes are kept and recorded in config.json (``load_merged``
rebuilds them). peftlab's classification head is not a transformers module (it pools the last hidden
state), so it goes beside the weights: ``head.safetensors`` + ``head.json`` (``load_head``).
Every export writes ``export.json``: the source run, the base model, how to load it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.protocol import adapter_layers, fold_adapters
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, build_method
from peftlab.models import build_model
from peftlab.models.heads import ClassificationHead
from peftlab.registry import TASKS
from peftlab.run.artifacts import load_adapter
from peftlab.run.folder import RunDir

log = logging.getLogger(__name__)

FORMATS = ("peft", "merged")
PRUNING_KEY = "peftlab_pruning"  # config.json of a pruned merged export: the kept heads and FFN channels
PEFT_METHODS = {"lora": "LORA", "elora": "VERA"}


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
    from peftlab.run.experiment import seed_everything  # the run's seed rebuilds a random base the same

    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir}: no config.yaml there; expected a peftlab run folder")
    status = RunDir(run_dir).finished_status()
    if status != "completed":
        raise ConfigError(
            f"{run_dir}: that run did not complete (results.json status: {status or 'none'}); only a "
            "completed run is exported"
        )
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.model.device = "cpu"
    task = TASKS.get(cfg.task.name)(cfg.task, cfg.data_root)
    method = build_method(cfg.method)
    seed_everything(cfg.seed)
    model, processor = build_model(cfg.model, task.num_labels, task.model_head)
    method.setup(model)
    load_adapter(model, method, run_dir)
    return Rebuilt(cfg, model.eval(), method, processor, run_dir)


def transformers_root(model: nn.Module) -> nn.Module:
    """The transformers model others load: the causal LM (with its LM head) or the backbone."""
    root = getattr(model, "transformers_model", None) or model.backbone
    if not hasattr(root, "save_pretrained"):
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


# -- peft -----------------------------------------------------------------------------------------------
def peft_layers(run: Rebuilt) -> list[tuple[str, LowRankLinear]]:
    """The run's adapter layers (names relative to the transformers model), when peft can express them."""
    name = run.method.name
    if name not in PEFT_METHODS:
        raise ConfigError(
            f"method {name!r} has no huggingface peft equivalent (peft exports: {', '.join(PEFT_METHODS)}); "
            f"export it with --to merged"
        )
    layers = adapter_layers(transformers_root(run.model))
    if not layers or any(not isinstance(m, LowRankLinear) or m.conv for _, m in layers):
        raise ConfigError(f"method {name!r}: only low-rank layers on nn.Linear go to peft; use --to merged")
    return layers  # type: ignore[return-value]


def lora_tensors(layers: list[tuple[str, LowRankLinear]]) -> tuple[dict[str, torch.Tensor], int, float]:
    """peft's LoRA tensors, the rank and the scale. PiSSA (base = W - s·B0 A0) becomes the rank-2r LoRA
    [B, -B0][A; A0] on the original base, as peft's PiSSA conversion writes it."""
    ranks = {m.rank for _, m in layers}
    scales = {m.scale for _, m in layers}
    if len(ranks) != 1 or len(scales) != 1:
        raise ConfigError(f"layers of different ranks {sorted(ranks)} or scales: use --to merged")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        a, b = (t.detach() for t in layer.low_rank_pair())
        if layer.init_A is not None:
            if layer.variant is not None:
                raise ConfigError("PiSSA with a LoRA variant has no peft form; use --to merged")
            a, b = torch.cat([a, layer.init_A]), torch.cat([b, -layer.init_B], dim=1)
        key = f"base_model.model.{name}"
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
        if layer.variant is not None:
            tensors[f"{key}.lora_magnitude_vector"] = layer.variant.magnitude.detach()
    return tensors, int(a.shape[0]), scales.pop()


def lora_config(run: Rebuilt, layers: list[tuple[str, LowRankLinear]], rank: int, scale: float):
    from peft import LoraConfig

    cfg = run.method.config
    alpha = scale * (math.sqrt(rank) if cfg.rslora else rank)  # peft's scale: alpha / r (or / sqrt(r))
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=cfg.dropout,
        use_rslora=cfg.rslora,
        use_dora=cfg.variant == "dora",
        target_modules=[name for name, _ in layers],
        base_model_name_or_path=base_location(run.cfg),
    )


def vera_export(run: Rebuilt, layers: list[tuple[str, LowRankLinear]]) -> tuple[dict[str, torch.Tensor], Any]:
    """ELoRA as peft's VeRA: the shared frozen pair (saved, ``save_projection``) and the vectors d, b."""
    from peft import VeraConfig

    cfg = run.method.config
    pairs = {id(m.fixed) for _, m in layers}
    if not cfg.shared_projections or len(pairs) != 1 or layers[0][1].fixed is None:
        raise ConfigError(
            "peft's VeRA shares one projection pair; elora shared_projections=false: --to merged"
        )
    fixed = layers[0][1].fixed
    tensors = {"base_model.vera_A": fixed.A, "base_model.vera_B": fixed.B}
    for name, layer in layers:
        tensors[f"base_model.model.{name}.vera_lambda_d"] = layer.vec_d.detach()
        tensors[f"base_model.model.{name}.vera_lambda_b"] = layer.vec_b.detach()
    config = VeraConfig(
        r=layers[0][1].rank,
        target_modules=[name for name, _ in layers],
        projection_prng_key=cfg.projection_seed,
        save_projection=True,
        d_initial=cfg.d_init,
        base_model_name_or_path=base_location(run.cfg),
    )
    return tensors, config


def write_peft(run: Rebuilt, out: Path) -> list[str]:
    """adapter_config.json + adapter_model.safetensors (+ the head beside them); returns notes."""
    layers = peft_layers(run)
    if run.method.name == "elora":
        tensors, config = vera_export(run, layers)
    else:
        tensors, rank, scale = lora_tensors(layers)
        config = lora_config(run, layers, rank, scale)
    config.save_pretrained(str(out))
    save_file(
        {k: v.to("cpu").contiguous().clone() for k, v in tensors.items()},
        str(out / "adapter_model.safetensors"),
    )
    return write_head(run.model, run.cfg, out)


# -- merged ---------------------------------------------------------------------------------------------
def write_merged(run: Rebuilt, out: Path) -> list[str]:
    """The adapters folded into the base (save_pretrained), the tokenizer, the head; returns notes."""
    root = transformers_root(run.model)
    try:
        fold_adapters(run.model)
    except ConfigError as err:
        raise ConfigError(f"method {run.method.name!r} cannot be exported merged: {err}") from None
    notes = []
    record = pruning_record(run.run_dir)
    if record is not None:
        setattr(root.config, PRUNING_KEY, record)
        notes.append(
            "Light-PEFT pruned heads and FFN channels: the weights have the pruned shapes; "
            "load with peftlab.export.load_merged(DIR) (transformers' from_config, the same pruning "
            f"from config.json's {PRUNING_KEY}, then the weights)"
        )
    root.save_pretrained(str(out))
    if hasattr(run.processor, "save_pretrained"):
        run.processor.save_pretrained(str(out))
    return notes + write_head(run.model, run.cfg, out)


def pruning_record(run_dir: Path) -> dict[str, Any] | None:
    """The kept heads and FFN channels per block of a Light-PEFT run, else None."""
    from peftlab.methods.light_peft.method import PRUNING_FILE

    path = run_dir / PRUNING_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return {"heads": record["heads"], "ffn_channels": record["ffn_channels"]}


def load_merged(folder: str | Path, **kwargs: Any) -> nn.Module:
    """A merged export as a transformers model: ``from_pretrained``, or, when pruned, ``from_config``
    pruned to the recorded shapes and then loaded (transformers configs have one width for all layers)."""
    from transformers import AutoConfig, AutoModel

    from peftlab.blocks.structure import blocks
    from peftlab.methods.light_peft.pruning import prune_structure

    config = AutoConfig.from_pretrained(folder)
    record = getattr(config, PRUNING_KEY, None)
    if record is None:
        return AutoModel.from_pretrained(folder, **kwargs)
    model = AutoModel.from_config(config)
    prune_structure(model, blocks(model), record)
    state = load_file(str(Path(folder) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ConfigError(f"{folder}: weights {unexpected[:5]} do not exist in the rebuilt model")
    log.info("load_merged %s: pruned shapes rebuilt; not in the file (initialised): %s", folder, missing)
    return model.eval()


# -- the head ------------------------------------------------------------------------------------------
def write_head(model: nn.Module, cfg: DictConfig, out: Path) -> list[str]:
    """peftlab's task head beside the weights (peft and transformers have no place for a pooling head)."""
    head = getattr(model, "head", None)
    if head is None or not list(head.parameters()):
        return []
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()},
        str(out / "head.safetensors"),
    )
    description = {
        "class": f"{type(head).__module__}.{type(head).__name__}",
        "num_labels": int(model.num_labels),
        "pooling": getattr(head, "pooling", None),
        "dropout": float(cfg.model.get("head_dropout", 0.0)),
        "hidden_size": int(model.config.hidden_size) if hasattr(model.config, "hidden_size") else None,
        "input": "the base model's last_hidden_state and attention_mask",
    }
    (out / "head.json").write_text(json.dumps(description, indent=2) + "\n")
    return [
        "head.safetensors: peftlab's task head (pooling over the last hidden state, then a linear layer); "
        "peft and transformers have no place for it; peftlab.export.load_head(DIR) rebuilds it"
    ]


def load_head(folder: str | Path) -> ClassificationHead:
    """The classification head of an export: ``head(last_hidden_state, attention_mask) -> logits``."""
    folder = Path(folder)
    meta = json.loads((folder / "head.json").read_text())
    if not meta["class"].endswith("ClassificationHead"):
        raise ConfigError(
            f"{folder}: head {meta['class']} is not a classification head; load head.safetensors"
        )
    state = load_file(str(folder / "head.safetensors"))
    pooler = None
    if meta["pooling"] == "pooler" and "pooler.dense.weight" in state:  # the backbone's own BertPooler
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertPooler

        pooler = BertPooler(BertConfig(hidden_size=meta["hidden_size"]))
    head = ClassificationHead(
        meta["hidden_size"], meta["num_labels"], meta["pooling"], meta["dropout"], pooler
    )
    head.load_state_dict(state)
    return head.eval()


# -- the command -----------------------------------------------------------------------------------------
def export(run_dir: str | Path, to: str, out: str | Path | None = None) -> Path:
    """Export ``run_dir`` as ``to`` (peft | merged) into ``out`` (default ``RUN_DIR/export/<to>``),
    written into a temp folder and renamed into place, so a failed export leaves nothing half-written."""
    if to not in FORMATS:
        raise ConfigError(f"--to {to!r} is not allowed; allowed: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / "export" / to
    run = rebuild(run_dir)
    if to == "peft":
        peft_layers(run)  # refuse before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        notes = write_peft(run, tmp) if to == "peft" else write_merged(run, tmp)
        (tmp / "export.json").write_text(json.dumps(describe(run, to, notes), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        path = export(args.run_dir, args.to, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} as {args.to}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
