"""Read training records from files, folders, the Hub or the bundled data, into one shape:
{"messages": [{"role", "content"}, ...]} for conversations, or {"text": ...} for plain text.

Each format is a converter in FORMATS (a dict, not an if/elif chain). Errors name file:line and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional

from phinetune.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    sample: dict
    where: str  # "file:line" for error messages


@dataclass
class ReadReport:
    read: int = 0
    skipped: list[str] = field(default_factory=list)  # one reason per skipped row


def _messages(row: dict, where: str) -> dict:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list, got {type(msgs).__name__}")
    if all(isinstance(m, str) for m in msgs):  # riddles_evolved shape: alternating user/assistant strings
        msgs = [{"role": ROLES[1 + i % 2], "content": m} for i, m in enumerate(msgs)]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field 'messages[{i}]' must be {{role: system|user|assistant, content: str}}, got {m!r:.80}")
    _check_turns(msgs, where)
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}


def _check_turns(msgs: list[dict], where: str) -> None:
    turns = [m["role"] for m in msgs if m["role"] != "system"]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(f"{where}: field 'messages': turn {i + 1} is '{role}' but '{expected}' was expected (turns must alternate user/assistant)")
    if not turns or turns[-1] != "assistant":
        raise DataError(f"{where}: field 'messages': the conversation must end with an assistant turn")


def _text(row: dict, where: str) -> dict:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field 'text' must be a non-empty string")
    return {"text": text}


FORMATS: dict[str, Callable[[dict, str], dict]] = {"messages": _messages, "riddles": _messages, "text": _text}


def detect_format(row: dict) -> Optional[str]:
    if "messages" in row:
        return "messages"
    if "text" in row:
        return "text"
    return None


def read_rows(path: Path) -> Iterator[tuple[dict, str]]:
    """Yield (row, 'file:line') from a .jsonl/.json/.csv/.parquet file or every such file in a folder."""
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.suffix in _LOADERS):
            yield from read_rows(child)
        return
    loader = _LOADERS.get(path.suffix)
    if loader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; expected .jsonl, .json, .csv or .parquet")
    yield from loader(path)


def _read_jsonl(path: Path) -> Iterator[tuple[dict, str]]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON at column {exc.colno} ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
            yield row, where


def _read_json(path: Path) -> Iterator[tuple[dict, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid UTF-8 JSON file ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    for i, row in enumerate(data):
        yield row, f"{path}:record {i + 1}"


def _read_table(path: Path) -> Iterator[tuple[dict, str]]:
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    offset = 2 if path.suffix == ".csv" else 1  # csv: header is line 1
    for i, row in enumerate(frame.to_dict(orient="records")):
        yield row, f"{path}:{i + offset}"


_LOADERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_table, ".parquet": _read_table}


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("phinetune.assets").joinpath(f"{name}.jsonl")))


def resolve_source(source: str) -> Path:
    if source.startswith("builtin:"):
        path = builtin_path(source.split(":", 1)[1])
        if not path.exists():
            raise DataError(f"{source}: no such bundled dataset; the bundled one is builtin:riddles")
        return path
    path = Path(source).expanduser()
    if path.exists():
        return path
    return _hub_dataset(source)


def _hub_dataset(source: str) -> Path:
    raise DataError(f"data file '{source}' does not exist (and is not a Hub dataset id reachable offline); check data.train / data.eval")


def read_records(source: str, fmt: str = "auto", columns: Optional[dict] = None, skip_bad: bool = False,
                 limit: Optional[int] = None, report: Optional[ReadReport] = None) -> list[Record]:
    """Read and validate every row of `source`; stop at the first bad row unless skip_bad."""
    report = report if report is not None else ReadReport()
    records = []
    for row, where in read_rows(resolve_source(source)):
        row = {_rename(k, columns): v for k, v in row.items()} if columns else row
        try:
            name = detect_format(row) if fmt == "auto" else fmt
            if name is None:
                raise DataError(f"{where}: cannot tell the format from fields {sorted(row)}; set data.format")
            records.append(Record(FORMATS[name](row, where), where))
        except DataError as exc:
            if not skip_bad:
                raise
            report.skipped.append(str(exc))
        if limit and len(records) >= limit:
            break
    report.read = len(records)
    if not records:
        raise DataError(f"{source}: no usable records (file empty or every row invalid)")
    return records


def _rename(key: str, columns: dict) -> str:
    # columns maps our field name -> the user's field name, e.g. {messages: conversation}
    inverse = {v: k for k, v in columns.items()}
    return inverse.get(key, key)
