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
    """Ctrl-C stopped a run after ``status: interrupted`` was written; the message says how to resume.

    A KeyboardInterrupt, so ``except Exception`` handlers let it through as they would Ctrl-C itself."""
