"""User-facing errors: one clear sentence, no traceback (the CLI catches these)."""


class PhinetuneError(Exception):
    """An error caused by the user's input (config, data, paths) rather than a bug."""


class ConfigError(PhinetuneError):
    """The run config is invalid: names the key and what was expected."""


class DataError(PhinetuneError):
    """A data file is invalid: names the file, line or row, field and what was expected."""


class PreflightError(PhinetuneError):
    """A silent misconfiguration was caught before training."""


def path_error(exc: OSError) -> str:
    """An OSError at a path the user gave (output.dir=/proc/x, a file where a folder should be) as one sentence."""
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{where}: {exc.strerror or exc}; check the path (its parent folders must exist and be writable folders)"
