"""Stop signals while training: what a scheduler sends to end a job early (SIGTERM: Slurm, ``scancel``,
``timeout``; SIGUSR1/SIGUSR2: what a job asks for with ``--signal``, submitit's preemption signal).

The first signal asks the loop to stop after the current optimizer step (the loop writes a checkpoint
and raises ``StopRequested``); a second one stops at once. Ctrl-C (SIGINT) keeps Python's own
KeyboardInterrupt. Both end in the same place: ``status: interrupted`` and the resume command.
The handlers are installed only while the loop trains and the previous ones are put back after; the
previous handler is handed the signal once the run has recorded its stop (submitit's requeue hook).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

from peftlab import distributed

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopRequested(KeyboardInterrupt):
    """Training stopped for signal ``signum`` after step ``step``; ``previous``: the handler that was
    installed before training (called once the stop is recorded), or None."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, previous: Callable | None) -> None:
        self.signum, self.step, self.checkpoint, self.previous = signum, step, checkpoint, previous
        where = f"after step {step}" if checkpoint else f"during step {step + 1}"
        saved = f", checkpoint {checkpoint} written" if checkpoint else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}{saved}")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (143: SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """The stop handlers, installed for the ``with`` block (in the main thread only: Python delivers
    signals there). ``signum``: the signal that asked to stop, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.step = 0  # the loop's step, for a stop at once
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def previous(self, signum: int) -> Callable | None:
        """The Python handler that was installed before training (e.g. submitit's), if any."""
        handler = self._previous.get(signum)
        return handler if callable(handler) else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: stop now, inside the step
            raise StopRequested(signum, self.step, None, self.previous(signum))
        self.signum = signum
        log.warning(
            "%s: stopping after this step (a checkpoint is written); send it again to stop at once",
            signal.Signals(signum).name,
        )

    def requested(self, step: int, every: int, device: torch.device) -> bool:
        """Whether a stop signal arrived. Under torchrun every rank must stop at the same step: they
        agree at logging points (every ``every`` steps), where they synchronize anyway."""
        if not distributed.enabled():
            return self.signum is not None
        if step % every:
            return False
        flag = torch.tensor(float(self.signum is not None), device=device)
        if not float(distributed.all_reduce_sum(flag)):
            return False
        self.signum = self.signum or signal.SIGTERM  # another rank received it
        return True

    def stop(self, step: int, checkpoint: str | None) -> StopRequested:
        """The exception that ends the loop after ``step`` for the signal received."""
        assert self.signum is not None
        return StopRequested(self.signum, step, checkpoint, self.previous(self.signum))
