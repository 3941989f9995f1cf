"""Exception types the CLI turns into one clear line and an exit status."""


class ConfigError(ValueError):
    """A value given by the user (config, override, data file) is not usable; the message says why."""


class FolderBusy(ConfigError):
    """Another live process owns the run folder; the message names it (pid, host, start time)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stops and what was written so far is kept."""


class StorageError(OSError):
    """A file of the run folder could not be written or read (disk full, quota, permissions)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or a stop signal stopped a run after ``status: interrupted`` was written; the message
    says how to resume. ``exit_code``: 130 for Ctrl-C, 128 + N for signal N; ``handover``: the signal
    handler that was installed before training (e.g. submitit's requeue), to call once the stop is
    recorded.

    A KeyboardInterrupt, so ``except Exception`` handlers let it through as they would Ctrl-C itself."""

    def __init__(self, message: str, exit_code: int = 130, handover: object = None) -> None:
        super().__init__(message)
        self.exit_code, self.handover = exit_code, handover
