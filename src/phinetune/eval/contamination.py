"""Training samples that overlap benchmark items: a benchmark score on items the model trained on measures recall.

Two checks, both on normalised text (lower-cased, punctuation deleted, split on whitespace; lm-eval's
decontamination janitor does the same):

- **13-gram overlap** (GPT-3 paper, appendix C; lm-eval `decontaminate`): an item is contaminated when any
  13 consecutive words of it also occur in a training sample. An item's text is each option written after
  its question (so a question copied with its options in any order still matches on the question), plus
  the question alone. A piece shorter than 13 words is matched whole, as GPT-3 did for short items, when it
  has at least MIN_PHRASE words (shorter phrases such as "the answer is yes" are everywhere).
- **near-duplicates by MinHash** (datasketch's MinHashLSH, through data/near_duplicates.py): the Jaccard
  similarity of character 5-gram sets of the whole item (question + all options) and the whole sample. It finds
  items that were reworded or had their options shuffled, which break every 13-gram. LSH only proposes
  candidates, each confirmed with the exact Jaccard similarity; its bands propose a pair at the threshold with
  probability RECALL.

Items are the `Doc`s that `phinetune eval` scores (eval/tasks.load_docs), so "item 7" here is item 7 there.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from phinetune.data.near_duplicates import NearDuplicates, minhash
from phinetune.data.readers import Record
from phinetune.eval.tasks import Doc, Task

NGRAM = 13
MIN_PHRASE = 8
JACCARD = 0.5  # a sample this similar to a whole item is a reworded copy of it (a rephrased riddle scores ~0.2)
SHINGLE = 5
# 0.99 rather than the cleaning's 0.999: 42 bands of 3 rows instead of 64 of 2, as fast as datasketch's own
# optimum (3.0 s against 8.0 s for 518 guanaco samples x 2,376 ARC-Easy items), which proposed a pair at 0.5
# only 55% of the time.
RECALL = 0.99
_DELETE = str.maketrans("", "", string.punctuation)
_FRAME = re.compile(r"^\s*question:\s*|\s*answer:\s*$", re.IGNORECASE)  # our ARC/PIQA prompt framing, not item text


def words(text: str) -> list[str]:
    return text.lower().translate(_DELETE).split()


def unframe(context: str) -> str:
    return _FRAME.sub("", context)


def item_pieces(doc: Doc) -> list[str]:
    """Each option after its (unframed) context, then the context alone."""
    contexts = [unframe(c) for c in doc.contexts]
    return [f"{c} {o}" for c, o in zip(contexts, doc.continuations)] + list(dict.fromkeys(contexts))


def item_text(doc: Doc) -> str:
    """The whole item once: the question, then every option (WinoGrande: each filled-in sentence)."""
    contexts = [unframe(c) for c in doc.contexts]
    if len(set(contexts)) > 1:  # partial evaluation: the options live in the contexts
        return " ".join(f"{c} {o}" for c, o in zip(contexts, doc.continuations))
    return " ".join(contexts[:1] + list(doc.continuations))


def sample_text(sample: dict) -> str:
    """Every string a training sample holds (message contents, prompt/completion, text), in order."""
    if "messages" in sample:
        return "\n".join(str(m.get("content", "")) for m in sample["messages"])
    return "\n".join(str(v) for v in sample.values() if isinstance(v, str))


def shingles(text: str) -> frozenset[str]:
    joined = " ".join(words(text))
    return frozenset(joined[i : i + SHINGLE] for i in range(max(1, len(joined) - SHINGLE + 1)))


@dataclass(frozen=True)
class Hit:
    task: str
    item: int  # 1-based, in the order `phinetune eval` scores them
    sample: str  # file:line of the training sample
    method: str  # "13-gram" | "phrase" | "minhash"
    detail: str  # the shared words, or the Jaccard similarity

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "item": self.item,
            "sample": self.sample,
            "method": self.method,
            "detail": self.detail,
        }


@dataclass
class Contamination:
    items: dict[str, int] = field(default_factory=dict)  # task -> items checked
    sources: dict[str, str] = field(default_factory=dict)  # task -> where its items came from
    hits: list[Hit] = field(default_factory=list)

    def contaminated(self, task: str) -> set[int]:
        """0-based indices of the contaminated items of `task`."""
        return {h.item - 1 for h in self.hits if h.task == task}

    def per_task(self) -> dict[str, dict]:
        return {
            t: {
                "items": n,
                "contaminated": len(self.contaminated(t)),
                "samples": len({h.sample for h in self.hits if h.task == t}),
                "source": self.sources.get(t, ""),
            }
            for t, n in self.items.items()
        }

    def as_dict(self) -> dict:
        return {
            "ngram": NGRAM,
            "min_phrase": MIN_PHRASE,
            "jaccard": JACCARD,
            "per_task": self.per_task(),
            "hits": [h.as_dict() for h in self.hits],
        }


class _Index:
    """n-gram (n = 13, or a whole short piece's length) -> the items holding it, for one task."""

    def __init__(self, docs: list[Doc]):
        self.grams: dict[int, dict[str, set[int]]] = {}
        self.near = NearDuplicates(JACCARD, recall=RECALL)
        for i, doc in enumerate(docs):
            for piece in item_pieces(doc):
                w = words(piece)
                if len(w) >= NGRAM:
                    for k in range(len(w) - NGRAM + 1):
                        self.grams.setdefault(NGRAM, {}).setdefault(" ".join(w[k : k + NGRAM]), set()).add(i)
                elif len(w) >= MIN_PHRASE:
                    self.grams.setdefault(len(w), {}).setdefault(" ".join(w), set()).add(i)
            self.near.add(i, shingles(item_text(doc)))

    def overlaps(self, sample: _Sample) -> dict[int, tuple[str, str]]:
        """item index -> (method, detail) for one training sample."""
        w, found = sample.words, {}
        for n, table in sorted(self.grams.items(), reverse=True):
            for k in range(len(w) - n + 1):
                gram = " ".join(w[k : k + n])
                for i in table.get(gram, ()):
                    found.setdefault(i, ("13-gram" if n == NGRAM else "phrase", gram))
        for i, score in self.near.find(sample.shingles, sample.minhash).items():
            found.setdefault(i, ("minhash", f"jaccard {score:.2f}"))
        return found


class _Sample:
    """A training sample's words, shingles and MinHash, computed once for all tasks."""

    def __init__(self, rec: Record):
        text = sample_text(rec.sample)
        self.where, self.words, self.shingles = rec.where, words(text), shingles(text)
        self.minhash = minhash(self.shingles)


def check(
    records: Iterable[Record], tasks: dict[str, list[Doc]], sources: dict[str, str] | None = None
) -> Contamination:
    """Every (training sample, benchmark item) overlap, for the items of each task."""
    samples = [_Sample(rec) for rec in records]
    out = Contamination(items={t: len(d) for t, d in tasks.items()}, sources=dict(sources or {}))
    for name, docs in tasks.items():
        index = _Index(docs)
        for sample in samples:
            for i, (method, detail) in sorted(index.overlaps(sample).items()):
                out.hits.append(Hit(name, i + 1, sample.where, method, detail))
    return out


def check_tasks(
    records: Iterable[Record], tasks: list[Task], data_dir: Path | None, limit: int | None = None
) -> Contamination:
    """`check` against the items `phinetune eval` would score (official files under data_dir, else the Hub)."""
    from phinetune.eval.tasks import load_docs, local_file

    docs = {t.name: load_docs(t, data_dir)[: limit or None] for t in tasks}
    sources = {t.name: str(local_file(t, Path(data_dir))) if data_dir else f"hub:{t.hub[0]}" for t in tasks}
    return check(records, docs, sources)


def print_contamination(result: Contamination, show: int = 20) -> None:
    from rich.table import Table

    from phinetune.progress import console

    table = Table(title=f"training data vs benchmark items ({NGRAM}-gram overlap, MinHash Jaccard >= {JACCARD})")
    for col in ("task", "items", "contaminated", "training samples", "items from"):
        table.add_column(col, justify="right" if col in ("items", "contaminated", "training samples") else "left")
    for task, row in result.per_task().items():
        style = "bold red" if row["contaminated"] else None
        table.add_row(
            task, str(row["items"]), str(row["contaminated"]), str(row["samples"]), row["source"], style=style
        )
    console.print(table)
    for h in result.hits[:show]:
        console.print(f"  {h.sample}: {h.task} item {h.item} ({h.method}: {h.detail})", highlight=False, markup=False)
    if len(result.hits) > show:
        console.print(f"  ... and {len(result.hits) - show} more (all in the JSON report)", highlight=False)


def save(result: Contamination, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=1, ensure_ascii=False))
    return path


def check_data(data, tasks: list[Task], data_dir: Path | None, out: Path) -> Contamination:
    """`data inspect --against`: the records `data` (a DataConfig) selects against the benchmarks' items; printed, and
    saved as OUT/benchmark-contamination.json."""
    from phinetune.data.readers import read_records
    from phinetune.progress import console

    records = read_records(data.train, data.format, data.columns, data.skip_bad_rows, data.limit, None, data.split)
    result = check_tasks(records, tasks, data_dir)
    print_contamination(result)
    console.print(f"written: {save(result, out / 'benchmark-contamination.json')}", highlight=False)
    return result


def preflight_check(cfg, records: list[Record], save_to: Path) -> Contamination:
    """The train pre-flight when eval.tasks is set: list overlaps, and refuse when eval.contamination=refuse."""
    from phinetune.errors import PreflightError
    from phinetune.eval.tasks import get_task
    from phinetune.progress import console

    result = check_tasks(
        records, [get_task(t) for t in cfg.eval.tasks], Path(cfg.eval.data_dir) if cfg.eval.data_dir else None
    )
    save(result, save_to)
    if not result.hits:
        console.print(
            f"contamination: no training sample overlaps the items of {', '.join(cfg.eval.tasks)}", highlight=False
        )
        return result
    print_contamination(result, show=5)
    message = (
        f"{len({h.sample for h in result.hits})} training sample(s) overlap benchmark items of eval.tasks (listed in {save_to}); "
        "their scores would measure recall: remove those samples, or score the clean items with `phinetune eval --decontaminate`"
    )
    if cfg.eval.contamination == "refuse":
        raise PreflightError(message + " (or set eval.contamination=warn)")
    console.print(f"warning: {message}", style="yellow", highlight=False)
    return result
