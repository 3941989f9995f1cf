"""One owner per run folder: an exclusive flock on ``<folder>/.peftlab.lock``, which names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from peftlab.errors import FolderBusy

LOCK = ".peftlab.lock"


def file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (mkstemp and safetensors use
    0600, which a team sharing a cluster folder cannot read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


# -- one owner ----------------------------------------------------------------------------------------
class FolderLock:
    """An exclusive flock on ``<folder>/.peftlab.lock``; the file says who holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe_owner(os.pread(fd, 4096, 0))
            os.close(fd)
            raise FolderBusy(
                f"output dir {self.path.parent} is in use by another run ({owner}); wait for it to end "
                "or choose another hydra.run.dir"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe_owner(raw: bytes) -> str:
    try:
        owner = json.loads(raw)
        return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):
        return "its owner has not written its pid yet"
