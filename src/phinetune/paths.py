"""Where phinetune keeps its caches (tokenized data, built-in tiny models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PHINETUNE_CACHE, else $XDG_CACHE_HOME/phinetune, else ~/.cache/phinetune."""
    root = os.environ.get("PHINETUNE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "phinetune")
    return Path(root).expanduser()
