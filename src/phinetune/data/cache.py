"""Cache of tokenized datasets, so a second run with the same inputs starts at once.

The key hashes everything the tokenized output depends on: the data's content (file bytes, or the
`datasets` fingerprint of a Hub set), the tokenizer (its full serialized vocabulary/merges and special
tokens), the chat template, the end-of-turn token, and every data setting. Change any of them and the
key changes, so a stale entry can never be reused. Entries are plain JSON (never pickle: a cache folder
may be shared, and loading it must not run code). Writes are atomic (temp file + rename). This module stores
and finds entries; each kind of data turns itself into an entry and back (data/dataset.py, the preference objective).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from phinetune.config.schema import DataConfig
from phinetune.data.readers import content_fingerprint
from phinetune.paths import cache_root

VERSION = 2  # bump when the rendering or the entry layout changes
# Settings that do not change the tokenized output stay out of the key.
NOT_IN_KEY = {"cache", "cache_dir", "packing"}


def cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return cache_root() / "data"


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        [
            tokenizer.chat_template,
            tokenizer.all_special_tokens,
            type(tokenizer).__name__,
            getattr(tokenizer, "add_bos_token", None),
            getattr(tokenizer, "add_eos_token", None),
        ],
        default=str,
    )
    return hashlib.sha256((body + extra).encode()).hexdigest()


def key_parts(cfg: DataConfig, tokenizer, eot: str, dialect: dict | None = None, layout: str = "sft") -> dict:
    settings = cfg.model_dump(exclude=NOT_IN_KEY)
    parts = {
        "version": VERSION,
        "train_data": content_fingerprint(cfg.train, cfg.split),
        "eval_data": content_fingerprint(cfg.eval, cfg.split) if cfg.eval else None,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": tokenizer.chat_template,
        "eot": eot,
        "dialect": dialect,  # how traces, tools and default system prompts are written (data/normalize.py)
        "settings": settings,
    }
    if (
        layout != "sft"
    ):  # preference pairs (train/objectives/preference.py): entries of their own, never read back as SFT data
        parts["layout"] = layout
    return parts


def cache_key(cfg: DataConfig, tokenizer, eot: str, dialect: dict | None = None, layout: str = "sft") -> str:
    parts = key_parts(cfg, tokenizer, eot, dialect, layout)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _path(cfg: DataConfig, key: str) -> Path:
    return cache_dir(cfg) / f"{key}.json"


def save_entry(cfg: DataConfig, key: str, entry: dict) -> Path:
    """Write a JSON entry atomically (SFT data and the preference objectives' pairs each convert their own)."""
    path = _path(cfg, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": VERSION, **entry}, ensure_ascii=False))
    tmp.replace(path)
    return path


def load_entry(cfg: DataConfig, key: str) -> dict | None:
    """The entry saved under `key`, or None (absent, unreadable or an older layout)."""
    path = _path(cfg, key)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and entry.get("version") == VERSION else None
