"""From config to tokenized train/eval sets: read, deduplicate, split, render with masks."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from phinetune.config.schema import DataConfig
from phinetune.data.readers import ReadReport, Record, read_records
from phinetune.data.render import Rendered, render_sample
from phinetune.errors import DataError
from phinetune.progress import track


@dataclass
class DataInfo:
    read: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    train: int = 0
    eval: int = 0
    truncated: int = 0
    empty: int = 0  # samples with no trained tokens (after truncation)


@dataclass
class PreparedData:
    train: list[Rendered]
    eval: list[Rendered]
    train_records: list[Record]
    info: DataInfo


def dedupe(records: list[Record]) -> tuple[list[Record], int]:
    seen, kept = set(), []
    for rec in records:
        key = json.dumps(rec.sample, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    return kept, len(records) - len(kept)


def split(records: list[Record], cfg: DataConfig) -> tuple[list[Record], list[Record]]:
    """Seeded split: the same data and seed always give the same eval set."""
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = cfg.eval_size if cfg.eval_size is not None else int(round(len(records) * cfg.eval_fraction))
    if n_eval >= len(records):
        raise DataError(f"data: eval split of {n_eval} leaves no training records out of {len(records)}; lower data.eval_fraction or data.eval_size")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def prepare_data(cfg: DataConfig, tokenizer, eot: str) -> PreparedData:
    info, report = DataInfo(), ReadReport()
    records = read_records(cfg.train, cfg.format, cfg.columns, cfg.skip_bad_rows, cfg.limit, report)
    info.read, info.skipped = report.read, report.skipped
    if cfg.dedupe:
        records, info.duplicates = dedupe(records)
    if cfg.eval:
        train_recs = records
        eval_recs = read_records(cfg.eval, cfg.format, cfg.columns, cfg.skip_bad_rows)
    else:
        train_recs, eval_recs = split(records, cfg)
    train = tokenize(train_recs, tokenizer, cfg, eot, info, "train")
    evals = tokenize(eval_recs, tokenizer, cfg, eot, info, "eval")
    info.train, info.eval = len(train), len(evals)
    return PreparedData(train, evals, train_recs, info)


def tokenize(records: list[Record], tokenizer, cfg: DataConfig, eot: str, info: DataInfo, name: str) -> list[Rendered]:
    out = []
    for rec in track(records, f"Tokenizing {name}"):
        r = render_sample(tokenizer, rec.sample, cfg.max_length, cfg.mask, eot)
        info.truncated += r.truncated
        if r.n_trained == 0:
            info.empty += 1
            continue  # reported by the pre-flight; a sample with no trained tokens adds nothing
        out.append(r)
    return out
