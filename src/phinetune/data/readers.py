"""Read training records from files, folders, the Hub or the bundled data, into one shape (see formats.py).

Every row keeps where it came from ("file:line", "file:row N", "owner/name[train]:row N") so each error
names it. File-level problems (missing, empty, unsupported type) always stop; row-level problems stop at
the first bad row, or with data.skip_bad_rows are skipped and summarised by reason: nothing is dropped
silently.
"""

from __future__ import annotations

import codecs
import difflib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from phinetune.data.formats import FORMATS, NOTE, RowError, detect_format
from phinetune.errors import DataError
from phinetune.models.hub import check_dataset_access, looks_like_path

# One JSONL line larger than this is refused rather than read: a line that size is almost always a
# file that is not JSON Lines at all (a whole JSON array or a binary dump), and reading it would hold
# it all in memory. Genuine long documents fit easily (16 MiB is ~4M tokens).
MAX_LINE_BYTES = 16 * 1024 * 1024
FIELDS = ("messages", "conversations", "instruction", "input", "output", "system", "prompt", "completion", "text")

Row = dict | RowError  # a parsed row, or the error that stopped it from parsing


@dataclass
class Record:
    sample: dict
    where: str  # "file:line" for error messages


@dataclass
class ReadReport:
    read: int = 0
    format: str = ""
    skipped: list[str] = field(default_factory=list)  # one message per skipped row
    reasons: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # reason -> where
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # repair made -> where

    def skip(self, exc: RowError) -> None:
        self.skipped.append(str(exc))
        self.reasons[exc.kind].append(exc.where)

    def summary(self) -> str:
        """'skipped 3 bad row(s): invalid JSON x2 (a.jsonl:3, a.jsonl:7); missing field 'output' x1 (a.jsonl:9)'."""
        lines = [f"{note} in {len(wheres)} row(s) ({_some(wheres)})" for note, wheres in self.notes.items()]
        if self.skipped:
            parts = [
                f"{kind} x{len(wheres)} ({_some(wheres)})"
                for kind, wheres in sorted(self.reasons.items(), key=lambda kv: -len(kv[1]))
            ]
            lines.append(f"skipped {len(self.skipped)} bad row(s): " + "; ".join(parts))
        return "\n".join(lines)


def _some(wheres: list[str], n: int = 3) -> str:
    return ", ".join(wheres[:n]) + (", ..." if len(wheres) > n else "")


# ---------------------------------------------------------------- files


def _read_jsonl(path: Path) -> Iterator[tuple[Row, str]]:
    with path.open("rb") as fh:
        n = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            n += 1
            where = f"{path}:{n}"
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise DataError(
                    f"{where}: line is longer than the {MAX_LINE_BYTES // 2**20} MiB limit per JSON line; "
                    "is this really a JSON Lines file? split the record or convert the file"
                )
            if n == 1:  # a UTF-8 byte-order mark (Windows editors write one) is not part of the first record
                raw = raw.removeprefix(codecs.BOM_UTF8)
            yield _parse_line(raw, where), where


def _parse_line(raw: bytes, where: str) -> Row | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowError(
            where,
            "not UTF-8",
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); re-save the file as UTF-8",
        )
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return RowError(where, "invalid JSON", f"invalid JSON at column {exc.colno} ({exc.msg})")
    if not isinstance(row, dict):
        return RowError(where, "not a JSON object", f"expected a JSON object per line, got {type(row).__name__}")
    return row


def _read_json(path: Path) -> Iterator[tuple[Row, str]]:
    """A JSON array of records (each named by the line it starts on), or JSON Lines saved as .json."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is accepted
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); re-save the file as UTF-8"
        ) from None
    if not text.lstrip().startswith("["):
        _refuse_single_object(text, path)
        yield from _read_jsonl(path)
        return
    decoder, i = json.JSONDecoder(), text.index("[") + 1
    line = text.count("\n", 0, i) + 1
    while True:
        j = _skip_space(text, i)
        line += text.count("\n", i, j)
        if j < len(text) and text[j] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, j)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON at column {exc.colno} ({exc.msg})") from None
        where = f"{path}:{line}"
        yield (
            (
                row
                if isinstance(row, dict)
                else RowError(where, "not a JSON object", f"expected a JSON object, got {type(row).__name__}")
            ),
            where,
        )
        k = _skip_space(text, end)
        line += text.count("\n", j, k)
        if k < len(text) and text[k] == ",":
            k += 1
        elif k >= len(text) or text[k] != "]":
            raise DataError(f"{path}:{line}: invalid JSON (expected ',' or ']' after the record)")
        i = k


def _refuse_single_object(text: str, path: Path) -> None:
    """A .json holding one object (e.g. {"data": [...]}) is neither an array nor JSON Lines: say so."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return  # JSON Lines (or broken JSON, reported line by line)
    if isinstance(obj, dict) and len(text.strip().splitlines()) > 1:
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        hint = f"; the records look like they are under '{lists[0]}': save that list as the file" if lists else ""
        raise DataError(
            f"{path}: holds one JSON object (keys {sorted(obj)[:5]}), expected a JSON array of records or one object per line{hint}"
        )


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _read_csv(path: Path) -> Iterator[tuple[Row, str]]:
    import pandas as pd

    try:
        # dtype=str, keep_default_na=False: an empty cell stays "" (reported as empty), never a float NaN.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {exc.start}); re-save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({str(exc).strip()})") from None
    for i, row in enumerate(frame.to_dict(orient="records")):
        yield row, f"{path}:row {i + 1}"


def _read_parquet(path: Path) -> Iterator[tuple[Row, str]]:
    import pyarrow.parquet as pq

    # to_pylist gives plain Python lists/dicts (pandas would give numpy arrays for list columns).
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield row, f"{path}:row {i + 1}"


_LOADERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_rows(path: Path) -> Iterator[tuple[Row, str]]:
    """Yield (row or RowError, where) from a supported file, or every supported file in a folder."""
    if path.is_dir():
        children = sorted(p for p in path.rglob("*") if p.suffix in _LOADERS and p.is_file())
        if not children:
            raise DataError(f"{path}: folder has no .jsonl, .json, .csv or .parquet files")
        for child in children:
            yield from read_rows(child)
        return
    loader = _LOADERS.get(path.suffix)
    if loader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; expected .jsonl, .json, .csv or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); expected records")
    for row, where in loader(path):
        if row is not None:
            yield row, where


# ---------------------------------------------------------------- sources


def builtin_names() -> list[str]:
    """The bundled data sets, as `builtin:NAME` takes them (every .jsonl in phinetune/assets)."""
    return sorted(Path(str(p)).stem for p in resources.files("phinetune.assets").iterdir() if str(p).endswith(".jsonl"))


def builtin_path(name: str) -> Path:
    """The file of `builtin:NAME`, or a DataError listing the bundled names (with the one most likely meant)."""
    path = Path(str(resources.files("phinetune.assets").joinpath(f"{name}.jsonl")))
    if not name or "/" in name or "\\" in name or not path.exists():
        names = builtin_names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        raise DataError(
            f"builtin:{name}: no such bundled dataset; "
            + (f"did you mean builtin:{close[0]}? " if close else "")
            + f"the bundled ones are {', '.join('builtin:' + n for n in names)}"
        )
    return path


def source_rows(source: str, split: str = "train") -> Iterator[tuple[Row, str]]:
    """Rows of a data source: builtin:NAME, a local file or folder, a saved dataset folder, or a Hub id (hf:ID forces the Hub)."""
    if source.startswith("builtin:"):
        return read_rows(builtin_path(source.split(":", 1)[1]))
    if source.startswith("hf:"):
        return _hub_dataset(source[3:], split)
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        return _disk_dataset(path, split)
    if path.exists():
        return read_rows(path)
    _refuse_missing_file(source)
    return _hub_dataset(source, split)


def _refuse_missing_file(source: str) -> None:
    """Something shaped like a file path that does not exist is a typo, not a Hub id to try."""
    if Path(source).suffix in _LOADERS or looks_like_path(source):
        raise DataError(f"data file '{source}' does not exist; check data.train / data.eval")


def _hub_dataset(source: str, split: str) -> Iterator[tuple[Row, str]]:
    """A Hub dataset id (or anything `datasets.load_dataset` takes) read through `datasets`, which owns
    the download, caching and offline logic; we only iterate the rows."""
    return _dataset_rows(_load_hub(source, split), f"{source}[{split}]")


def _load_hub(source: str, split: str):
    import datasets

    check_dataset_access()  # an unreachable Hub: cache only, no minute of retries
    try:
        return datasets.load_dataset(source, split=split)
    except (
        Exception
    ) as exc:  # datasets raises many types (not found, offline, bad split); all mean the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"data source '{source}' is not a local file or folder, and `datasets` could not load it "
            f"(split '{split}'): {first}"
        ) from None


def _disk_dataset(path: Path, split: str) -> Iterator[tuple[Row, str]]:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: saved dataset has no split '{split}' (it has {', '.join(ds)}); set data.split")
        ds = ds[split]
    return _dataset_rows(ds, f"{path}[{split}]")


def _dataset_rows(ds, name: str) -> Iterator[tuple[Row, str]]:
    if len(ds) == 0:
        raise DataError(f"{name}: the dataset split is empty")
    for i, row in enumerate(ds):
        yield row, f"{name}:row {i + 1}"


def content_fingerprint(source: str, split: str = "train") -> str:
    """A string that changes whenever the data a source yields may change (for the tokenized cache)."""
    import hashlib

    if source.startswith("builtin:"):
        paths = [builtin_path(source.split(":", 1)[1])]
    else:
        path = Path(source.removeprefix("hf:")).expanduser()
        if not path.exists() and not source.startswith("hf:"):
            _refuse_missing_file(source)
        if not path.exists() or source.startswith("hf:"):
            return f"hub:{source}:{split}:{_load_hub(source.removeprefix('hf:'), split)._fingerprint}"
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for p in paths:
        digest.update(str(p.name).encode())
        with p.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- records


def read_records(
    source: str,
    fmt: str = "auto",
    columns: dict | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    report: ReadReport | None = None,
    split: str = "train",
) -> list[Record]:
    """Read and validate every row of `source`; stop at the first bad row unless skip_bad."""
    report = report if report is not None else ReadReport()
    columns = _check_columns(columns or {})
    records: list[Record] = []
    name = "" if fmt == "auto" else fmt  # detected once per source, from its first row
    for row, where in source_rows(source, split):
        try:
            if isinstance(row, RowError):
                raise row
            row = _rename(row, columns, where)
            name = name or detect_format(row)
            sample = FORMATS[name](row, where)
            if NOTE in sample:
                report.notes[sample.pop(NOTE)].append(where)
            records.append(Record(sample, where))
        except RowError as exc:
            if not skip_bad:
                raise
            report.skip(exc)
        except DataError as exc:  # format detection: name the row that could not be placed
            raise DataError(f"{where}: {exc}") from None
        if limit and len(records) >= limit:
            break
    report.read += len(records)
    report.format = report.format or name
    if not records:
        why = f" ({report.summary()})" if report.skipped else ""
        raise DataError(f"{source}: no usable records{why}")
    return records


def _check_columns(columns: dict) -> dict:
    unknown = [k for k in columns if k not in FIELDS]
    if unknown:
        raise DataError(
            f"data.columns: '{unknown[0]}' is not a field phinetune reads; keys are our field names "
            f"({', '.join(FIELDS)}) and values are the names in your data, e.g. {{prompt: QUESTIONS}}"
        )
    return columns


def _rename(row: dict, columns: dict, where: str) -> dict:
    """columns maps our field name -> the user's field name, e.g. {prompt: QUESTIONS}."""
    if not columns:
        return row
    for ours, theirs in columns.items():
        if theirs not in row:
            raise RowError(
                where,
                f"missing column '{theirs}'",
                f"missing field '{theirs}' (mapped to '{ours}' by data.columns); "
                f"fields present: {', '.join(sorted(row))}",
            )
    inverse = {theirs: ours for ours, theirs in columns.items()}
    return {inverse.get(k, k): v for k, v in row.items() if k not in columns or k in inverse}
