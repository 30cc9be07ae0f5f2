"""Run the real LM Evaluation Harness (`lm_eval`, optional extra `eval`) on a base model or a run's adapter.

With local files (--data-dir) we write them in the Hub's row format next to a task YAML that `include`s
lm-eval's own task config and only swaps the dataset for local json files, so prompts, few-shot sampling and
metrics are lm-eval's, untouched. Without --data-dir lm-eval loads its tasks from the Hub itself.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from phinetune.eval.scoring import TaskResult
from phinetune.eval.tasks import Task, local_file, read_records
from phinetune.extras import require


def _arc_row(rec: dict) -> dict:
    q = rec["question"]
    if not isinstance(q, dict):
        return rec
    return {
        "id": rec.get("id", ""),
        "question": q["stem"],
        "answerKey": rec["answerKey"],
        "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
    }


def _piqa_row(rec: dict) -> dict:
    return {"goal": rec["goal"], "sol1": rec["sol1"], "sol2": rec["sol2"], "label": int(rec["label"])}


def _hellaswag_row(rec: dict) -> dict:
    if "ctx_a" in rec:
        return {**rec, "label": str(rec["label"])}
    # the llama.cpp-derived file joined ctx_a and ctx_b; an empty ctx_b makes lm-eval's query equal ours (it strips)
    return {
        "activity_label": rec["activity_label"],
        "ctx_a": rec["ctx"],
        "ctx_b": "",
        "ctx": rec["ctx"],
        "endings": rec["endings"],
        "label": str(rec["label"]),
    }


def _winogrande_row(rec: dict) -> dict:
    return {k: str(rec[k]) for k in ("sentence", "option1", "option2", "answer")}


HUB_ROWS: dict[str, Callable[[dict], dict]] = {
    "arc_easy": _arc_row,
    "arc_challenge": _arc_row,
    "piqa": _piqa_row,
    "hellaswag": _hellaswag_row,
    "winogrande": _winogrande_row,
}
# lm-eval's config for each task, relative to lm_eval/tasks
HARNESS_YAML = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
}


def require_lm_eval():
    require("--harness (the LM Evaluation Harness)", "eval", "lm_eval")
    import lm_eval

    return lm_eval


def write_local_task(task: Task, data_dir: Path, out: Path, limit: int | None = None) -> str:
    """A task YAML under `out` named local_<task>: lm-eval's config, with our local files as its dataset."""
    lm_eval = require_lm_eval()
    convert = HUB_ROWS[task.name]
    split_files = {"test": local_file(task, data_dir), "train": local_file(task, data_dir, fewshot=True)}
    data_files = {}
    for split, path in split_files.items():
        if path is None:
            continue
        rows = [convert(r) for r in read_records(path)]
        rows = rows[:limit] if (split == "test" and limit) else rows
        target = out / f"{task.name}_{split}.jsonl"
        target.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data_files[split] = str(target)
    name = f"local_{task.name}"
    base_yaml = Path(lm_eval.__file__).parent / "tasks" / HARNESS_YAML[task.name]
    lines = [
        f"include: {base_yaml}",
        f"task: {name}",
        "tag: []",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        *[f"    {k}: {v}" for k, v in data_files.items()],
        "test_split: test",
        "validation_split: null",
        f"training_split: {'train' if 'train' in data_files else 'null'}",
    ]
    if "train" not in data_files:  # few-shot examples then come from the eval split (lm-eval excludes the item itself)
        lines.append("fewshot_split: test")
    (out / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    return name


def harness_model(model, tokenizer, batch_size: int):
    """lm-eval's HF model around weights we loaded (runs.loading.base_and_tuned), so the harness scores exactly
    the base and tuned models our own scorer does, loaded the same one way."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def run_harness(lm, tasks: list[Task], limit: int | None, shots: int, data_dir: Path | None) -> dict[str, TaskResult]:
    """Scores from lm_eval.simple_evaluate, as our TaskResult (metrics, stderr and per-item hits)."""
    lm_eval = require_lm_eval()
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="phinetune-harness-") as tmp:
        if data_dir is not None:
            names = {t.name: write_local_task(t, Path(data_dir), Path(tmp), limit) for t in tasks}
            manager = TaskManager(
                include_path=tmp, include_defaults=False
            )  # indexing all of lm-eval's tasks takes ~20 s
        else:
            names, manager = {t.name: t.name for t in tasks}, TaskManager()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=list(names.values()), task_manager=manager, num_fewshot=shots, limit=limit, log_samples=True
        )
    return {t.name: _as_result(t, res, names[t.name], shots) for t in tasks}


def _as_result(task: Task, res: dict, name: str, shots: int) -> TaskResult:
    scores = res["results"][name]
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    items = [
        {"hits": {m: float(s[m]) for m in task.metrics}, "lls": [float(r[0]) for r in s["filtered_resps"]]}
        for s in samples
    ]
    return TaskResult(
        task.name,
        len(samples),
        shots,
        {m: float(scores[f"{m},none"]) for m in task.metrics},
        {m: float(scores[f"{m}_stderr,none"]) for m in task.metrics},
        items,
    )
