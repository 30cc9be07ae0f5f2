"""Optional dependencies: a verb that needs an extra says which one, in one sentence, before any slow work."""

from __future__ import annotations

import importlib

from phinetune.errors import PhinetuneError


def require(what: str, extra: str, *modules: str) -> None:
    """Raise `<what> needs <modules>: pip install 'phinetune[<extra>]'` when any of `modules` cannot be imported."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise PhinetuneError(f"{what} needs {' and '.join(missing)}, which is not installed: pip install 'phinetune[{extra}]'")
