"""One exception type for bad user input, so the CLI can print it as one clear line."""


class ConfigError(ValueError):
    """A value given by the user (config, override, data file) is not usable; the message says why."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stops and what was written so far is kept."""
