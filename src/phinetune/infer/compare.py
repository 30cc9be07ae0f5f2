"""`phinetune compare RUN`: base and fine-tuned answers to the same prompts, side by side.

The before/after check, done the same way for every run: a terminal table and a Markdown file. A LoRA run
is loaded once and the base answers come from the same weights with the adapter switched off
(PEFT `disable_adapter`), so there is no second copy of the model in memory.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from phinetune.data.prompts import read_prompt_rows
from phinetune.errors import PhinetuneError
from phinetune.infer.complete import Sampling
from phinetune.infer.generate import answer_all
from phinetune.markdown import md_table
from phinetune.models.load_options import LoadOptions
from phinetune.progress import console
from phinetune.runs.checkpoints import select
from phinetune.runs.folders import open_run
from phinetune.runs.held_out import held_out_prompts
from phinetune.runs.loading import base_and_tuned, load_for_inference
from phinetune.runs.run_dir import RunDir


@dataclass
class Row:
    prompt: list[dict]
    reference: str | None
    base: str
    tuned: str


def default_prompts(run: RunDir, n: int) -> list[tuple[list[dict], str | None]]:
    """The run's held-out prompts (runs/held_out.py: the conversation up to its last answer, and that answer)."""
    try:
        pairs = held_out_prompts(run, n)
    except PhinetuneError as exc:
        raise PhinetuneError(f"{exc}; pass --prompts FILE.jsonl") from None
    if not pairs:
        raise PhinetuneError(
            f"the eval data of {run.path} holds no conversations to take prompts from; pass --prompts FILE.jsonl"
        )
    return pairs


def compare_run(
    run_path: str,
    prompts_file: Path | None = None,
    n: int = 5,
    sampling: Sampling | None = None,
    batch_size: int = 8,
    load: LoadOptions = LoadOptions(),
    out: Path | None = None,
) -> list[Row]:
    run = open_run(run_path)
    pairs = (
        [(r["messages"], r.get("reference")) for r in read_prompt_rows(prompts_file)]
        if prompts_file
        else default_prompts(run, n)
    )
    sampling = sampling or Sampling()
    convs = [p for p, _ in pairs]
    base, tuned = _answers(run, convs, sampling, batch_size, load)
    rows = [Row(p, ref, b.text.strip(), t.text.strip()) for (p, ref), b, t in zip(pairs, base, tuned)]
    console.print(render_table(rows, run.path.name))
    out = out or run.compare
    out.write_text(render_markdown(rows, str(run.path), sampling), encoding="utf-8")
    console.print(f"Markdown written to {out}")
    return rows


def _answers(run: RunDir, convs, sampling, batch_size, load: LoadOptions):
    answers = {
        label: answer_all(loaded, convs, sampling, batch_size, "Base model" if label == "base" else "Fine-tuned")
        for label, loaded in base_and_tuned(run, load.dtype, load.quant)
    }
    return answers["base"], answers["tuned"]


def _last_user(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def render_table(rows: list[Row], title: str) -> Table:
    table = Table(title=f"base vs fine-tuned: {title}", show_lines=True, expand=True)
    with_ref = any(r.reference for r in rows)
    for name in ["prompt", *(["reference"] if with_ref else []), "base", "fine-tuned"]:
        table.add_column(name, overflow="fold", ratio=1)
    for r in rows:
        table.add_row(_last_user(r.prompt), *([r.reference or ""] if with_ref else []), r.base, r.tuned)
    return table


def render_markdown(rows: list[Row], run: str, sampling: Sampling) -> str:
    with_ref = any(r.reference for r in rows)
    head = ["#", "prompt", *(["reference"] if with_ref else []), "base", "fine-tuned"]
    cells = [
        [k, _last_user(r.prompt), *([r.reference or ""] if with_ref else []), r.base, r.tuned]
        for k, r in enumerate(rows, start=1)
    ]
    return (
        "\n".join(
            [
                f"# Base vs fine-tuned: `{run}`",
                "",
                f"Sampling: temperature={sampling.temperature}, top_k={sampling.top_k}, top_p={sampling.top_p}, "
                f"max_new_tokens={sampling.max_new_tokens}, seed={sampling.seed}.",
                "",
                md_table(head, cells),
            ]
        )
        + "\n"
    )


# ---------------------------------------------------------------- compare --checkpoints


def compare_checkpoints(
    run_path: str,
    spec: str,
    prompts_file: Path | None = None,
    n: int = 5,
    sampling: Sampling | None = None,
    batch_size: int = 8,
    load: LoadOptions = LoadOptions(),
    out: Path | None = None,
) -> dict:
    """The same prompts answered by the base, each selected checkpoint and the final weights: one column each.

    Loaded one at a time (a checkpoint's trainable weights over the run's model), so memory stays that of one model."""
    run = open_run(run_path)
    points = select(run, spec)
    pairs = (
        [(r["messages"], r.get("reference")) for r in read_prompt_rows(prompts_file)]
        if prompts_file
        else default_prompts(run, n)
    )
    sampling = sampling or Sampling()
    columns = {}
    for point in points:
        loaded = load_for_inference(
            str(run.path), load.dtype, load.quant, adapter=point.adapter, checkpoint=point.checkpoint
        )
        columns[point.label] = [
            a.text.strip() for a in answer_all(loaded, [p for p, _ in pairs], sampling, batch_size, point.label)
        ]
        del loaded
        gc.collect()
    result = {
        "run": str(run.path),
        "points": [{"label": p.label, "step": p.step} for p in points],
        "rows": [
            {"prompt": _last_user(p), "reference": ref, "answers": {k: v[i] for k, v in columns.items()}}
            for i, (p, ref) in enumerate(pairs)
        ],
    }
    table = Table(title=f"answers per checkpoint: {run.path.name}", show_lines=True, expand=True)
    for name in ["prompt", *columns]:
        table.add_column(name, overflow="fold", ratio=1)
    for row in result["rows"]:
        table.add_row(row["prompt"], *row["answers"].values())
    console.print(table)
    run.checkpoint_answers.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    head = ["#", "prompt", *(f"{p.label} (step {p.step})" for p in points)]
    cells = [[k, row["prompt"], *row["answers"].values()] for k, row in enumerate(result["rows"], start=1)]
    out = out or run.checkpoint_compare
    out.write_text(
        "\n".join([f"# Answers per checkpoint: `{run.path}`", "", md_table(head, cells)]) + "\n", encoding="utf-8"
    )
    console.print(f"Markdown written to {out}")
    return result
