"""Where and from what code a run ran, for results.json: a table built from stored runs names the commit,
machine and command of each, so a number can be traced to the code and the hardware that gave it."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]  # the checkout holding this copy of peftlab (if any)


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit of the checkout and whether tracked files differ from it; None for each outside git
    (an installed copy of peftlab inside some other repository is not that repository's code)."""
    if not (repo / ".git").exists():  # a folder in a checkout, a file in a worktree
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=True
    )
    return done.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; what ``platform`` knows elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device | None = None) -> dict[str, Any]:
    """Commit, date, machine, threads and command of this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    record: dict[str, Any] = {
        **git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": shlex.join(["python", "-m", "peftlab", *sys.argv[1:]]),
    }
    if device is not None and device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record
