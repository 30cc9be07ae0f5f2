"""User-facing errors: one clear sentence, no traceback (the CLI catches these)."""


class PhinetuneError(Exception):
    """An error caused by the user's input (config, data, paths) rather than a bug."""


class ConfigError(PhinetuneError):
    """The run config is invalid: names the key and what was expected."""


class DataError(PhinetuneError):
    """A data file is invalid: names the file, line or row, field and what was expected."""


class PreflightError(PhinetuneError):
    """A silent misconfiguration was caught before training."""
