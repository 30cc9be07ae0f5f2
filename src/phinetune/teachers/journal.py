"""The crash-safe journal: one JSON line per finished teacher call, appended and fsynced as it arrives.

A call's key is deterministic (stage, item id, sample index, hash of everything sent), so re-running the
same command finds every paid-for answer and never repeats that call. A SIGKILL can at worst leave one
torn last line; it is cut off on open (that call was never recorded, so it is simply made again).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from phinetune.errors import DataError


def call_hash(payload: dict) -> str:
    """Hash of the exact request (messages, sampling, teacher model): a changed prompt is a new call."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def call_key(stage: str, item: str, sample: int, digest: str) -> str:
    return f"{stage}/{item}/{sample}/{digest}"


@dataclass
class Entry:
    key: str
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        row = {
            "key": self.key,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "finish_reason": self.finish_reason,
            **self.extra,
        }
        return json.dumps(row, ensure_ascii=False)


class Journal:
    """Append-only JSONL of Entry rows, indexed by key."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Entry] = {}
        self.recovered_torn_line = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._fh = path.open("ab")

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0  # byte offset after the last complete, valid line
        for n, line in enumerate(data.splitlines(keepends=True), start=1):
            complete = line.endswith(b"\n")
            try:
                row = json.loads(line)
                entry = Entry(
                    row.pop("key"),
                    row.pop("text"),
                    row.pop("prompt_tokens", 0),
                    row.pop("completion_tokens", 0),
                    row.pop("cost", 0.0),
                    row.pop("finish_reason", None),
                    row,
                )
            except (ValueError, KeyError, TypeError):
                if good + len(line) == len(data):  # the last line: a write cut short by a kill
                    self._truncate(good)
                    return
                raise DataError(
                    f"{self.path}:{n}: corrupt journal line (not a JSON object with key and text); fix or remove that line"
                ) from None
            if not complete:  # valid JSON but no newline: finish the line so the next append starts cleanly
                with self.path.open("ab") as fh:
                    fh.write(b"\n")
            self.entries[entry.key] = entry
            good += len(line)

    def _truncate(self, size: int) -> None:
        with self.path.open("r+b") as fh:
            fh.truncate(size)
            os.fsync(fh.fileno())
        self.recovered_torn_line = True

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def append(self, entry: Entry) -> None:
        # fsync per answer: a paid call is on disk before we count it done (the cost is tiny next to an API call).
        self._fh.write((entry.to_json() + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.entries[entry.key] = entry

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
