"""Prompt files: JSON Lines of prompts to answer (`generate --input`, `compare --prompts`, `judge --prompts`).

Read here, in data/, like every other file of examples: each line a `prompt` string or a `messages` conversation,
with other fields (an `id`, a `reference` answer) kept. A bad line is one sentence naming
the file, the line, what it holds and what a line should hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from phinetune.errors import DataError

# What a prompt file holds, shown with every error about one (generate --input, compare/judge --prompts).
PROMPT_LINES = (
    'one JSON object per line with a "prompt" (a string) or "messages" (a list of {"role", "content"}) field, '
    'e.g. {"prompt": "What has keys?"} or {"messages": [{"role": "user", "content": "What has keys?"}]}'
)

ARRAY = "a JSON array, not JSON Lines"
JSON_TYPES = {str: "string", int: "number", float: "number", bool: "true/false", type(None): "null"}


def read_prompt_rows(path: Path) -> list[dict]:
    """Rows with `messages` (a conversation ending in a user turn) or `prompt` (one user message)."""
    if not path.exists():
        raise DataError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is accepted
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); re-save the file as UTF-8"
        ) from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            what = ARRAY if line.lstrip().startswith("[") else f"not JSON ({exc.msg} at column {exc.colno})"
            raise DataError(f"{path}:{n}: {what}; expected {PROMPT_LINES}") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            row = {**row, "messages": [{"role": "user", "content": row["prompt"]}]}
        if not (isinstance(row, dict) and _valid_messages(row.get("messages"))):
            got = (
                f"an object with {', '.join(repr(k) for k in list(row)[:5]) or 'no keys'}"
                if isinstance(row, dict)
                else ARRAY
                if isinstance(row, list)
                else f"a JSON {JSON_TYPES.get(type(row), 'value')}"
            )
            raise DataError(f"{path}:{n}: {got}; expected {PROMPT_LINES}")
        rows.append(row)
    if not rows:
        raise DataError(f"prompt file {path} holds no prompts; expected {PROMPT_LINES}")
    return rows


def _valid_messages(messages) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
