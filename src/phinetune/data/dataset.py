"""From config to tokenized train/eval sets: read, deduplicate, split, render with masks (cached)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

from phinetune.config.schema import DataConfig
from phinetune.data import cache
from phinetune.data.normalize import for_template
from phinetune.data.readers import ReadReport, Record, read_records
from phinetune.data.reasoning import mask_traces
from phinetune.data.render import Rendered, render_sample
from phinetune.errors import DataError
from phinetune.models.specs import GENERIC, ModelSpec
from phinetune.progress import track


@dataclass
class DataInfo:
    read: int = 0
    format: str = ""
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    read_summary: str = ""  # rows repaired or skipped, grouped by reason, with where they were
    train: int = 0
    eval: int = 0
    truncated: int = 0
    empty: int = 0  # samples with no trained tokens (after truncation)
    empty_where: list[str] = field(default_factory=list)  # file:line of each of them
    cached: bool = False  # loaded from the tokenized-data cache


@dataclass
class PreparedData:
    train: list[Rendered]
    eval: list[Rendered]
    train_records: list[Record]
    info: DataInfo
    dropped: list[Rendered] = field(
        default_factory=list
    )  # rendered samples left out: no trained token (counted by the pre-flight)


def sample_key(rec: Record) -> str:
    return json.dumps(rec.sample, sort_keys=True, ensure_ascii=False)


def find_duplicates(records: list[Record]) -> list[tuple[str, str]]:
    """(where of the duplicate, where of its first occurrence) for every repeated sample."""
    first: dict[str, str] = {}
    dups = []
    for rec in records:
        key = sample_key(rec)
        if key in first:
            dups.append((rec.where, first[key]))
        else:
            first[key] = rec.where
    return dups


def dedupe(records: list[Record]) -> tuple[list[Record], int]:
    seen, kept = set(), []
    for rec in records:
        key = sample_key(rec)
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    return kept, len(records) - len(kept)


def hold_out(records: list[Record], cfg: DataConfig) -> tuple[list[Record], list[Record]]:
    """(train, held out): a seeded split, so the same data and seed always hold out the same eval records.

    Not to be confused with `data.split`, which names the split of a Hub dataset to read."""
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = cfg.eval_size if cfg.eval_size is not None else int(round(len(records) * cfg.eval_fraction))
    if n_eval >= len(records):
        raise DataError(
            f"data: eval split of {n_eval} leaves no training records out of {len(records)}; lower data.eval_fraction or data.eval_size"
        )
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def prepare_data(cfg: DataConfig, tokenizer, eot: str, spec: ModelSpec | None = None) -> PreparedData:
    """Tokenized train/eval sets; reuses the cache when data, tokenizer, template and settings all match.

    `spec` says how reasoning traces, tools and the default system prompt are written (data/normalize.py)."""
    spec = spec or GENERIC
    key = cache.cache_key(cfg, tokenizer, eot, None if spec is GENERIC else dialect(spec)) if cfg.cache else None
    hit = _from_entry(cache.load_entry(cfg, key)) if key else None
    if hit is not None:
        return hit
    data = _prepare(cfg, tokenizer, eot, spec)
    if key:
        cache.save_entry(cfg, key, _to_entry(data))
    return data


def _to_entry(data: PreparedData) -> dict:
    return {
        "train": [asdict(r) for r in data.train],
        "eval": [asdict(r) for r in data.eval],
        "dropped": [asdict(r) for r in data.dropped],
        "train_records": [asdict(r) for r in data.train_records],
        "info": asdict(data.info),
    }


def _from_entry(entry: dict | None) -> PreparedData | None:
    """The cached PreparedData, or None (absent, or damaged: rebuilt, never trusted)."""
    if entry is None:
        return None
    try:
        info = DataInfo(**{**entry["info"], "cached": True})
        train, evals = [Rendered(**r) for r in entry["train"]], [Rendered(**r) for r in entry["eval"]]
        records, dropped = [Record(**r) for r in entry["train_records"]], [Rendered(**r) for r in entry["dropped"]]
        return PreparedData(train, evals, records, info, dropped)
    except (KeyError, TypeError):
        return None


def split_records(
    cfg: DataConfig, skip_bad: bool, report: ReadReport | None = None
) -> tuple[list[Record], list[Record], int]:
    """(train records, eval records, duplicates removed): read, deduplicated, then the seeded split or data.eval.

    The one place this is decided, so compare and the report take their held-out prompts from exactly the
    records training held out."""
    records = read_records(cfg.train, cfg.format, cfg.columns, skip_bad, cfg.limit, report, cfg.split)
    duplicates = 0
    if cfg.dedupe:
        records, duplicates = dedupe(records)
    if cfg.eval:
        return (
            records,
            read_records(cfg.eval, cfg.format, cfg.columns, skip_bad, report=report, split=cfg.split),
            duplicates,
        )
    train_recs, eval_recs = hold_out(records, cfg)
    return train_recs, eval_recs, duplicates


def dialect(spec: ModelSpec) -> dict:
    """The spec facts normalization uses: they change the tokens, so they are part of the cache key."""
    return {
        "reasoning_tags": spec.reasoning_tags,
        "tool_format": spec.tool_format,
        "system_prompt": "" if spec.system_prompt_in_template else spec.system_prompt,
    }


def _prepare(cfg: DataConfig, tokenizer, eot: str, spec: ModelSpec) -> PreparedData:
    info, report = DataInfo(), ReadReport()
    train_recs, eval_recs, info.duplicates = split_records(cfg, cfg.skip_bad_rows, report)
    info.read, info.format, info.skipped, info.read_summary = (
        report.read,
        report.format,
        report.skipped,
        report.summary(),
    )
    dropped: list[Rendered] = []
    train = tokenize(train_recs, tokenizer, cfg, eot, info, "train", dropped, spec)
    evals = tokenize(eval_recs, tokenizer, cfg, eot, info, "eval", dropped, spec)
    info.train, info.eval = len(train), len(evals)
    return PreparedData(train, evals, train_recs, info, dropped)


def render_at(rec: Record, tokenizer, cfg: DataConfig, eot: str, spec: ModelSpec | None = None) -> Rendered:
    """render_sample of the record in template form, with any rendering problem reported at its file:line."""
    spec = spec or GENERIC
    try:
        rendered = render_sample(
            tokenizer, for_template(rec.sample, spec), cfg.max_length, cfg.mask, eot, cfg.fold_system
        )
        if cfg.reasoning == "answer" and "messages" in rec.sample:
            rendered = mask_traces(rendered, tokenizer, spec.reasoning_tags)
    except DataError as exc:
        raise DataError(f"{rec.where}: {exc}") from None
    rendered.where = rec.where
    return rendered


def tokenize(
    records: list[Record],
    tokenizer,
    cfg: DataConfig,
    eot: str,
    info: DataInfo,
    name: str,
    dropped: list[Rendered] | None = None,
    spec: ModelSpec | None = None,
) -> list[Rendered]:
    out, dropped = [], dropped if dropped is not None else []
    for rec in track(records, f"Tokenizing {name}"):
        r = render_at(rec, tokenizer, cfg, eot, spec)
        info.truncated += r.truncated
        if r.n_trained == 0:
            # Left out of training, but counted and named: the pre-flight refuses the run unless
            # preflight.allow_empty_samples, so truncation never silently empties a sample.
            info.empty += 1
            info.empty_where.append(rec.where)
            dropped.append(r)
            continue
        out.append(r)
    return out
