"""`phinetune eval RUN`: the same benchmark items scored on the base model and on the fine-tuned one.

The delta's standard error is paired (per-item differences on the same items), which is the right error bar
for "did fine-tuning change this score"; a drop larger than it is flagged as likely knowledge loss.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from phinetune.errors import PhinetuneError
from phinetune.eval.scoring import TaskResult, evaluate_task, mean_stderr
from phinetune.eval.tasks import Task, load_docs
from phinetune.progress import console, escape, print_table
from phinetune.runs.folders import open_run
from phinetune.runs.run_dir import RunDir


@dataclass
class EvalPlan:
    tasks: list[Task]
    limit: int | None = None
    shots: int = 0
    data_dir: Path | None = None
    batch_size: int = 16
    harness: bool = False
    decontaminate: bool = False  # score only items no training sample overlaps
    contaminated: dict | None = None  # task -> 0-based indices of contaminated items (set by evaluate_run)


def find_contamination(run: RunDir, plan: EvalPlan) -> dict[str, set[int]]:
    """Items of each task that overlap this run's training samples (eval/contamination.py); saved as RUN/contamination.json."""
    from phinetune.data.dataset import split_records
    from phinetune.eval import contamination

    try:
        records = split_records(run.read_config().data, skip_bad=True)[0]
    except PhinetuneError as exc:
        if plan.decontaminate:
            raise PhinetuneError(
                f"--decontaminate: cannot read the run's training data to find overlaps ({exc})"
            ) from None
        console.print(
            f"warning: contamination not checked, the run's training data is unreadable ({exc})",
            style="yellow",
            highlight=False,
        )
        return {}
    result = contamination.check_tasks(records, plan.tasks, plan.data_dir, plan.limit)
    contamination.save(result, run.contamination)
    if result.hits:
        contamination.print_contamination(result, show=5)
    return {t.name: result.contaminated(t.name) for t in plan.tasks}


def plan_docs(task: Task, plan: EvalPlan):
    """(docs to score, their 0-based indices in the task's item list, indices of the contaminated ones)."""
    docs = load_docs(task, plan.data_dir)[: plan.limit or None]
    dirty = (plan.contaminated or {}).get(task.name, set())
    keep = [i for i in range(len(docs)) if not (plan.decontaminate and i in dirty)]
    return [docs[i] for i in keep], keep, dirty


def compare_rows(base: dict[str, TaskResult], tuned: dict[str, TaskResult]) -> list[dict]:
    rows = []
    for name, b in base.items():
        t = tuned[name]
        for metric in b.metrics:
            delta = t.metrics[metric] - b.metrics[metric]
            # paired: the standard error of the per-item differences on the same items
            se = mean_stderr([ti["hits"][metric] - bi["hits"][metric] for bi, ti in zip(b.items, t.items)])
            rows.append(
                {
                    "task": name,
                    "metric": metric,
                    "n": b.n,
                    "contaminated": sum(bool(i.get("contaminated")) for i in b.items),
                    "base": b.metrics[metric],
                    "tuned": t.metrics[metric],
                    "delta": delta,
                    "stderr": se,
                    "base_stderr": b.stderr[metric],
                    "tuned_stderr": t.stderr[metric],
                    "drop": delta < 0 and -delta > se + 1e-9,
                }
            )  # tolerance: 0.30 - 0.35 is not exactly -0.05
    return rows


def score_model(model, tokenizer, plan: EvalPlan, label: str) -> dict[str, TaskResult]:
    results = {}
    for task in plan.tasks:
        docs, index, dirty = plan_docs(task, plan)
        pool = load_docs(task, plan.data_dir, fewshot=True) if plan.shots else []
        result = evaluate_task(model, tokenizer, task, docs, pool, plan.shots, plan.batch_size, f"{label} {task.name}")
        for item, i in zip(result.items, index):
            item["item"], item["contaminated"] = i + 1, i in dirty
        results[task.name] = result
    return results


def score_ours(run: RunDir, plan: EvalPlan) -> tuple[dict, dict]:
    from phinetune.runs.loading import base_and_tuned

    out = {label: score_model(loaded.model, loaded.tokenizer, plan, label) for label, loaded in base_and_tuned(run)}
    return out["base"], out["tuned"]


def score_harness(run: RunDir, plan: EvalPlan) -> tuple[dict, dict]:
    from phinetune.eval.harness import harness_model, run_harness
    from phinetune.runs.loading import base_and_tuned

    out = {
        label: run_harness(
            harness_model(loaded.model, loaded.tokenizer, plan.batch_size),
            plan.tasks,
            plan.limit,
            plan.shots,
            plan.data_dir,
        )
        for label, loaded in base_and_tuned(run)
    }
    for results in out.values():  # lm-eval returns items in the tasks' order, as we read them
        for name, result in results.items():
            dirty = (plan.contaminated or {}).get(name, set())
            for i, item in enumerate(result.items):
                item["item"], item["contaminated"] = i + 1, i in dirty
    return out["base"], out["tuned"]


def evaluate_run(run_path: str, plan: EvalPlan) -> dict:
    """Score base and tuned, print the table, save RUN/eval.json, and return what was saved."""
    run = open_run(run_path)
    if plan.decontaminate and plan.harness:
        raise PhinetuneError(
            "--decontaminate scores a subset of items, which lm-eval's task loader cannot do; drop --harness"
        )
    start = time.perf_counter()
    plan.contaminated = find_contamination(run, plan)
    base, tuned = (score_harness if plan.harness else score_ours)(run, plan)
    report = {
        "run": str(run.path),
        "scorer": "lm-eval" if plan.harness else "phinetune",
        "tasks": [t.name for t in plan.tasks],
        "limit": plan.limit,
        "shots": plan.shots,
        "decontaminated": plan.decontaminate,
        "contaminated": {k: len(v) for k, v in (plan.contaminated or {}).items()},
        "data": str(plan.data_dir) if plan.data_dir else "hub",
        "seconds": round(time.perf_counter() - start, 2),
        "rows": compare_rows(base, tuned),
        "base": {k: v.as_dict() for k, v in base.items()},
        "tuned": {k: v.as_dict() for k, v in tuned.items()},
    }
    run.eval_report.write_text(json.dumps(report, indent=1))
    print_table(comparison_table(report))
    drops = [r for r in report["rows"] if r["drop"]]
    if drops:
        console.print(
            f"[bold red]{len(drops):d} score(s) dropped by more than their standard error[/bold red] "
            + escape("(possible knowledge loss: " + ", ".join(f"{r['task']} {r['metric']}" for r in drops) + ")"),
            markup=True,
        )
    console.print(f"saved {run.eval_report}")
    return report


def comparison_table(report: dict) -> Table:
    table = Table(
        title=f"base vs fine-tuned ({report['scorer']}, {report['shots']}-shot, "
        f"{'all' if not report['limit'] else report['limit']} items per task"
        f"{', contaminated items left out' if report.get('decontaminated') else ''})"
    )
    for col in ("task", "metric", "n", "contam.", "base", "tuned", "delta", "stderr", "flag"):
        table.add_column(
            col, justify="right" if col in ("n", "contam.", "base", "tuned", "delta", "stderr") else "left"
        )
    for r in report["rows"]:
        flag = Text("DROP > stderr", style="bold red") if r["drop"] else ""
        dirty = report.get("contaminated", {}).get(r["task"], 0)
        contam = f"{dirty} left out" if report.get("decontaminated") and dirty else str(r.get("contaminated", 0))
        table.add_row(
            r["task"],
            r["metric"],
            str(r["n"]),
            contam,
            f"{r['base']:.4f}",
            f"{r['tuned']:.4f}",
            f"{r['delta']:+.4f}",
            f"{r['stderr']:.4f}",
            flag,
        )
    return table
