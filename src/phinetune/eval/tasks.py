"""Multiple-choice benchmark tasks as data: where their items come from and how each becomes a `Doc`.

Prompt formats follow the LM Evaluation Harness task configs (lm_eval/tasks/{arc,piqa,hellaswag,winogrande})
so that our numbers can be checked against it item for item (tests/test_harness.py does).
Items are read from local files in the official formats (ARC jsonl, PIQA jsonl + labels, HellaSwag jsonl,
WinoGrande jsonl/csv) or, when no local folder is given, from the Hub through `datasets`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phinetune.errors import DataError, PhinetuneError
from phinetune.models.hub import check_dataset_access


@dataclass(frozen=True)
class Doc:
    """One question, as the (context, continuation) pairs that get scored: option i is contexts[i] + " " + continuations[i].

    Ordinary tasks share one context and vary the continuation; WinoGrande ("partial evaluation") varies the
    context (the sentence prefix filled with each option) and scores the same suffix after each.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    norm_lengths: tuple[int, ...]  # characters each option's log-likelihood is divided by for acc_norm

    @property
    def shot(self) -> str:
        """The solved example used in few-shot prompts: the gold option written out."""
        return f"{self.contexts[self.gold]} {self.continuations[self.gold]}"


def choice_doc(query: str, choices: list[str], gold: int) -> Doc:
    return Doc(tuple([query] * len(choices)), tuple(choices), gold, tuple(len(c) for c in choices))


# ---- one parser per task: a raw record (official file or Hub row) -> Doc ----


def _arc(rec: dict) -> Doc:
    q = rec["question"]
    if isinstance(q, dict):  # official AI2 jsonl: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}
        texts, labels, stem = [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]], q["stem"]
    else:  # Hub allenai/ai2_arc: {"question", "choices": {"text": [...], "label": [...]}, "answerKey"}
        texts, labels, stem = list(rec["choices"]["text"]), list(rec["choices"]["label"]), q
    return choice_doc(f"Question: {stem}\nAnswer:", texts, labels.index(rec["answerKey"]))


def _piqa(rec: dict) -> Doc:
    return choice_doc(f"Question: {rec['goal']}\nAnswer:", [rec["sol1"], rec["sol2"]], int(rec["label"]))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py: brackets are artifacts of the WikiHow part of HellaSwag."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(rec: dict) -> Doc:
    # Official/Hub rows split the context in ctx_a + ctx_b (and lm-eval capitalizes ctx_b); the llama.cpp-derived
    # file only has the joined `ctx`, so its ctx_b stays lower-case (one character differs from lm-eval's prompt).
    ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize() if "ctx_a" in rec else rec["ctx"]
    query = hellaswag_preprocess(rec["activity_label"] + ": " + ctx)
    return choice_doc(query, [hellaswag_preprocess(e) for e in rec["endings"]], int(rec["label"]))


def _winogrande(rec: dict) -> Doc:
    sentence = rec["sentence"]
    cut = sentence.index("_")
    options = [rec["option1"], rec["option2"]]
    suffix = sentence[cut + 1 :].strip()
    contexts = tuple(sentence[:cut] + opt for opt in options)
    return Doc(contexts, (suffix, suffix), {"1": 0, "2": 1}[str(rec["answer"])], tuple(len(c) for c in contexts))


# ---- readers: file -> raw records ----


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def read_with_labels(path: Path) -> list[dict]:
    """PIQA / WinoGrande ship answers in a sibling X-labels.lst, one per line, aligned with X.jsonl."""
    rows = read_jsonl(path)
    labels_file = path.with_name(path.stem + "-labels.lst")
    if labels_file.exists() and rows and "label" not in rows[0] and "answer" not in rows[0]:
        labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        if len(labels) != len(rows):
            raise DataError(
                f"{labels_file}: {len(labels)} labels for {len(rows)} rows in {path.name}; the files must be aligned"
            )
        key = "answer" if "sentence" in rows[0] else "label"
        rows = [{**r, key: lab} for r, lab in zip(rows, labels)]
    return rows


def read_winogrande_csv(path: Path) -> list[dict]:
    """The WinoGrande dev CSV with predictions: rows without a qID (the summary line) are not items."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r.get("qID")]


READERS: dict[str, Callable[[Path], list[dict]]] = {".jsonl": read_with_labels, ".csv": read_winogrande_csv}


@dataclass(frozen=True)
class Task:
    name: str
    parse: Callable[[dict], Doc]
    metrics: tuple[str, ...]
    files: tuple[str, ...]  # eval split file names, looked up under --data-dir (first found wins)
    fewshot_files: tuple[str, ...]  # training split for few-shot examples; absent: drawn from the eval split
    hub: tuple[str, str | None, str]  # dataset path, config name, split (lm-eval's choices)
    hub_fewshot_split: str = "train"


ACC = ("acc", "acc_norm")
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "arc_easy",
            _arc,
            ACC,
            ("ARC-Easy-Test.jsonl",),
            ("ARC-Easy-Train.jsonl",),
            ("allenai/ai2_arc", "ARC-Easy", "test"),
        ),
        Task(
            "arc_challenge",
            _arc,
            ACC,
            ("ARC-Challenge-Test.jsonl",),
            ("ARC-Challenge-Train.jsonl",),
            ("allenai/ai2_arc", "ARC-Challenge", "test"),
        ),
        Task(
            "hellaswag",
            _hellaswag,
            ACC,
            ("hellaswag_val.jsonl", "hellaswag_val_llamacpp_converted.jsonl"),
            ("hellaswag_train.jsonl",),
            ("Rowan/hellaswag", None, "validation"),
        ),
        Task(
            "piqa",
            _piqa,
            ACC,
            ("piqa/valid.jsonl", "valid.jsonl"),
            ("piqa/train.jsonl", "train.jsonl"),
            ("baber/piqa", None, "validation"),
        ),
        # WinoGrande scores the same suffix after each option, so acc_norm would equal acc: lm-eval reports acc only.
        Task(
            "winogrande",
            _winogrande,
            ("acc",),
            ("dev.jsonl", "winogrande_dev_with_preds.csv"),
            ("train_xl.jsonl", "train_l.jsonl", "train_m.jsonl", "train_s.jsonl"),
            ("allenai/winogrande", "winogrande_xl", "validation"),
        ),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise PhinetuneError(f"unknown eval task '{name}'; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def parse_tasks(spec: str) -> list[Task]:
    """'arc_easy,piqa' -> tasks (comma-separated, no duplicates)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise PhinetuneError(f"--tasks is empty; pick from {', '.join(TASKS)}")
    return [get_task(n) for n in dict.fromkeys(names)]


def find_file(data_dir: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` directly under data_dir, else anywhere below it (sorted, so deterministic)."""
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
        hits = sorted(p for p in data_dir.rglob(name) if p.is_file())
        if hits:
            return hits[0]
    return None


def read_records(path: Path) -> list[dict]:
    reader = READERS.get(path.suffix)
    if reader is None:
        raise DataError(f"{path}: unsupported eval file type '{path.suffix}'; expected .jsonl or .csv")
    return reader(path)


def parse_records(task: Task, records: list[dict], where: Path) -> list[Doc]:
    docs = []
    for n, rec in enumerate(records, start=1):
        try:
            docs.append(task.parse(rec))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{where}: item {n}: not a {task.name} record in the official format ({type(exc).__name__}: {exc})"
            ) from None
    return docs


def docs_from_file(task: Task, path: Path) -> list[Doc]:
    return parse_records(task, read_records(path), path)


def local_file(task: Task, data_dir: Path, fewshot: bool = False) -> Path | None:
    """The eval (or few-shot) file of `task` under data_dir; None for a missing few-shot file."""
    if not Path(data_dir).is_dir():
        raise PhinetuneError(f"--data-dir {data_dir} is not a folder")
    path = find_file(Path(data_dir), task.fewshot_files if fewshot else task.files)
    if path is None and not fewshot:
        raise DataError(f"no {task.name} file under {data_dir}; expected one of: {', '.join(task.files)}")
    return path


def docs_from_hub(task: Task, split: str) -> list[Doc]:
    import datasets

    path, name, _ = task.hub
    check_dataset_access()  # an unreachable Hub: cache only, no minute of retries
    try:
        rows = datasets.load_dataset(path, name, split=split)
    except Exception as exc:  # offline, no cache, renamed dataset: say which and how to work around it
        raise PhinetuneError(
            f"could not load {task.name} from the Hub ({path}, split {split}): {type(exc).__name__}: {exc}; "
            f"pass --data-dir with the official files instead"
        ) from None
    return [task.parse(dict(r)) for r in rows]


def load_docs(task: Task, data_dir: Path | None, fewshot: bool = False) -> list[Doc]:
    """The eval items of `task` (or its few-shot pool), from data_dir when given, else the Hub.

    A missing few-shot training file gives [] (the caller then draws examples from the eval split, as lm-eval does).
    """
    if data_dir is None:
        return docs_from_hub(task, task.hub_fewshot_split if fewshot else task.hub[2])
    path = local_file(task, Path(data_dir), fewshot)
    return docs_from_file(task, path) if path else []
