"""The GPU check's report (``scripts/gpu_check.sh``): one row per check in gpu_check.md and the same
numbers in gpu_check.json, with the machine they were measured on."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from peftlab.reporting.markdown import table

if TYPE_CHECKING:
    from pathlib import Path

    from peftlab.reporting.gpu_check import Options


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # pass | fail | skip
    seconds: float
    peak_memory_mib: float | None = None
    detail: str = ""


def environment(device: str) -> dict[str, object]:
    """What the report's numbers were measured on."""
    env: dict[str, object] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def write_report(checks: list[Check], env: dict, opts: Options, seconds: float) -> Path:
    """gpu_check.md (a table, one row per check) and gpu_check.json (the same numbers)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skip")}
    mode = "--quick" if opts.quick else "full"
    lines = [
        f"# GPU check ({opts.device}, {mode})",
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        f"- total: {seconds:.0f} s; " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"- method checks ran {opts.jobs} at a time (each time includes sharing the device with the others)",
        "- peak memory: the largest of the check's runs (results.json's peak_memory_bytes: CUDA max "
        "allocated, on CPU the process's peak RSS)",
        "",
    ]
    rows = [(c.name, c.status, f"{c.seconds:.1f}", c.peak_memory_mib or "", c.detail) for c in checks]
    lines += table(["check", "status", "time s", "peak MiB", "detail / error"], rows, "llrrl")
    report = opts.out / "gpu_check.md"
    report.write_text("\n".join(lines) + "\n")
    payload = {"environment": env, "mode": mode, "seconds": round(seconds, 1), "counts": counts}
    payload["checks"] = [asdict(c) for c in checks]
    (opts.out / "gpu_check.json").write_text(json.dumps(payload, indent=2) + "\n")
    return report
