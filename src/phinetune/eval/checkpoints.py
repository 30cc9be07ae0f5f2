"""Quality over training time: benchmark scores at every kept checkpoint, not only at the end.

Loss curves mislead about quality (in a published Phi-2 fine-tune, eval loss rose from epoch 7, yet answers at
epoch 20 were better), so `train.keep` keeps the best checkpoints by eval loss and by a task, and
`phinetune eval RUN --checkpoints all` scores each kept one, the base (step 0) and the final weights, and
plots task score against step next to the loss curves.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from phinetune.charts import LOSS, Line, Panel, curve, save
from phinetune.errors import PhinetuneError
from phinetune.progress import console
from phinetune.runs.checkpoints import select
from phinetune.runs.folders import open_run

if TYPE_CHECKING:
    from phinetune.train.loop import TrainHooks


def training_hooks(cfg) -> TrainHooks | None:
    """What eval.tasks adds to `phinetune train`: the contamination pre-flight, and task scores at each checkpoint (train.keep)."""
    from phinetune.eval.contamination import preflight_check
    from phinetune.eval.tasks import get_task
    from phinetune.train.loop import TrainHooks

    if not cfg.eval.tasks:
        return None
    for name in cfg.eval.tasks:  # a typo in eval.tasks fails here, before any model is loaded
        get_task(name)

    def check_data(run_cfg, records, run) -> None:
        if run_cfg.eval.contamination != "off":
            preflight_check(run_cfg, records, run.contamination)

    return TrainHooks(check_data, lambda model, tokenizer: score_during_training(model, tokenizer, cfg.eval))


def score_during_training(model, tokenizer, eval_cfg) -> dict[str, float]:
    """task:metric -> score of the model being trained, on eval.tasks (eval.limit items each), for train.keep."""
    from phinetune.eval.scoring import evaluate_task
    from phinetune.eval.tasks import get_task, load_docs

    was_training = model.training
    model.eval()
    scores = {}
    data_dir = Path(eval_cfg.data_dir) if eval_cfg.data_dir else None
    for name in eval_cfg.tasks:
        task = get_task(name)
        docs = load_docs(task, data_dir)[: eval_cfg.limit or None]
        result = evaluate_task(model, tokenizer, task, docs, [], 0)
        scores.update({f"{name}:{metric}": value for metric, value in result.metrics.items()})
    model.train(was_training)
    return scores


def evaluate_checkpoints(run_path: str, plan, spec: str) -> dict:
    """Score plan.tasks at each selected point; save RUN/checkpoint_eval.json and the plot RUN/checkpoint_scores.png."""
    from phinetune.eval.compare import find_contamination, score_model
    from phinetune.runs.loading import load_for_inference

    run = open_run(run_path)
    if plan.harness:
        raise PhinetuneError("--checkpoints scores with phinetune's own scorer; drop --harness")
    points = select(run, spec)
    start = time.perf_counter()
    plan.contaminated = find_contamination(run, plan)
    rows = []
    for point in points:
        loaded = load_for_inference(str(run.path), adapter=point.adapter, checkpoint=point.checkpoint)
        results = score_model(loaded.model, loaded.tokenizer, plan, point.label)
        rows.append(
            {
                "label": point.label,
                "step": point.step,
                "scores": {f"{t}:{m}": v for t, r in results.items() for m, v in r.metrics.items()},
                "stderr": {f"{t}:{m}": v for t, r in results.items() for m, v in r.stderr.items()},
                "n": {t: r.n for t, r in results.items()},
            }
        )
        del loaded
        gc.collect()  # one model in memory at a time
    report = {
        "run": str(run.path),
        "tasks": [t.name for t in plan.tasks],
        "limit": plan.limit,
        "shots": plan.shots,
        "decontaminated": plan.decontaminate,
        "seconds": round(time.perf_counter() - start, 2),
        "points": rows,
    }
    run.checkpoint_eval.write_text(json.dumps(report, indent=1))
    plot_scores(report, run.read_metrics(), run.checkpoint_plot)
    console.print(scores_table(report))
    console.print(f"saved {run.checkpoint_eval} and {run.checkpoint_plot}")
    return report


def scores_table(report: dict) -> Table:
    keys = list(report["points"][0]["scores"]) if report["points"] else []
    table = Table(
        title=f"task scores per checkpoint ({report['shots']}-shot, {report['limit'] or 'all'} items per task)"
    )
    for col in ["checkpoint", "step", *keys]:
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for p in report["points"]:
        table.add_row(p["label"], str(p["step"]), *(f"{p['scores'][k]:.4f} ± {p['stderr'][k]:.4f}" for k in keys))
    return table


def plot_scores(report: dict, metrics: list[dict], out: Path) -> Path:
    """Two panels: the run's loss chart, and each task:metric against step (error bars: one standard error)."""
    points = report["points"]
    scores = tuple(
        Line(key, [(p["step"], p["scores"][key]) for p in points], errors=[p["stderr"][key] for p in points])
        for key in (points[0]["scores"] if points else {})
    )
    panel = Panel("Task score per kept checkpoint", "optimizer step (0: base)", "score", scores)
    return save([curve(LOSS, metrics), panel], out, size=(6, 4))
