"""`phinetune eval`, `judge` and `report`: how good a finished run is, and the page that says so."""

from __future__ import annotations

from pathlib import Path

import typer

from phinetune.cli.app import app
from phinetune.cli.options import SAMPLING, Checkpoints, MaxNewTokens, Prompts

RUN_HELP = "A run folder from `phinetune train`."


@app.command("eval")
def eval_run(
    run: str = typer.Argument(..., help=RUN_HELP),
    tasks: str = typer.Option(
        "arc_easy,piqa,winogrande,hellaswag",
        help="Comma-separated: arc_easy, arc_challenge, hellaswag, piqa, winogrande.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N items of each task."),
    shots: int = typer.Option(0, min=0, help="Few-shot examples per prompt (from the training split)."),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Folder with the official eval files (ARC-Easy-Test.jsonl, piqa/valid.jsonl, hellaswag_val.jsonl, dev.jsonl ...: see docs/eval.md); default: lm-eval's Hub datasets (allenai/ai2_arc, baber/piqa, Rowan/hellaswag, allenai/winogrande) through `datasets`.",
    ),
    batch_size: int = typer.Option(16, min=1, help="Sequences per forward pass."),
    harness: bool = typer.Option(
        False, "--harness", help="Score with the real lm-eval harness (pip install 'phinetune[eval]')."
    ),
    decontaminate: bool = typer.Option(
        False,
        "--decontaminate",
        help="Score only the items no training sample overlaps (13-gram / MinHash); contaminated items are counted either way.",
    ),
    checkpoints: Checkpoints = None,
) -> None:
    """Benchmark the base model and the fine-tuned one on the same items; flag drops larger than the standard error."""
    from phinetune.eval.tasks import parse_tasks
    from phinetune.runs.targets import check_run

    check_run(
        run,
        "--checkpoints",
        final=not checkpoints,
        use_checkpoint="pass --checkpoints base,{name} to score its last checkpoint",
    )
    chosen = parse_tasks(tasks)
    if data_dir is None:
        from phinetune.models.hub import require_datasets

        require_datasets(
            sorted({t.hub[0] for t in chosen}),
            "eval without --data-dir",
            "pass --data-dir with the official files (see docs/eval.md)",
        )
    from phinetune.eval.compare import EvalPlan, evaluate_run

    plan = EvalPlan(chosen, limit, shots, data_dir, batch_size, harness, decontaminate)
    if checkpoints:
        from phinetune.eval.checkpoints import evaluate_checkpoints

        evaluate_checkpoints(run, plan, checkpoints)
    else:
        evaluate_run(run, plan)


@app.command()
def judge(
    run: str = typer.Argument(..., help=RUN_HELP),
    judge_model: str = typer.Option(
        ...,
        "--judge-model",
        help="The judge: a model name at an OpenAI-compatible endpoint, or (with --judge-kind local) a run/merged folder, model id or tiny-* name.",
    ),
    judge_kind: str = typer.Option(
        "openai", "--judge-kind", help="openai (any OpenAI-compatible endpoint, e.g. `phinetune serve`) or local."
    ),
    base_url: str | None = typer.Option(
        None,
        "--base-url",
        help="Endpoint base URL ending in /v1 (default: $PHINETUNE_TEACHER_BASE_URL, $OPENAI_BASE_URL, else OpenAI).",
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the judge's API key."
    ),
    a: str = typer.Option("base", "--a", help="First model: base, last, best or step-N."),
    b: str = typer.Option(
        "last", "--b", help="Second model (the one whose win rate is reported): base, last, best or step-N."
    ),
    prompts: Prompts = None,
    n: int = typer.Option(10, "--n", min=1, help="How many held-out prompts to judge."),
    max_new_tokens: MaxNewTokens = SAMPLING.max_new_tokens,
    judge_max_tokens: int = typer.Option(
        512, help="Most tokens per judge verdict (its reasons, then [[A]]/[[B]]/[[C]])."
    ),
    concurrency: int = typer.Option(8, help="Judge requests in flight at once (openai)."),
    price_input_per_1m: float = typer.Option(0.0, help="USD per million prompt tokens, for the cost counter."),
    price_output_per_1m: float = typer.Option(0.0, help="USD per million completion tokens."),
) -> None:
    """A judge model compares two models' answers pairwise, in both orders: win/tie/loss rates with 95% intervals and its reasons."""
    from phinetune.runs.targets import check_run, final_weights_named

    last = "--b" if b == "last" else "--a" if a == "last" else None
    check_run(
        run,
        "--b",
        final=last is not None and final_weights_named(run),
        use_checkpoint=f"pass {last} {{name}} to judge its last checkpoint",
    )
    from phinetune.config.explain import from_flags
    from phinetune.eval.judge import JUDGE_FLAGS, Sides, judge_run
    from phinetune.teachers.config import TeacherConfig

    teacher = from_flags(
        TeacherConfig,
        JUDGE_FLAGS,
        kind=judge_kind,
        model=judge_model,
        base_url=base_url,
        api_key_env=api_key_env,
        concurrency=concurrency,
        price_input_per_1m=price_input_per_1m,
        price_output_per_1m=price_output_per_1m,
    )
    judge_run(run, teacher, Sides(a, b), prompts, n, max_new_tokens, judge_max_tokens=judge_max_tokens)


@app.command()
def report(
    run: str = typer.Argument(..., help=RUN_HELP),
    samples: int = typer.Option(
        3, min=0, help="Held-out prompts to answer with base and tuned model (0: none; RUN/compare.md wins if present)."
    ),
) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md: config, pre-flight, curves, benchmarks, sample answers."""
    from phinetune.report.page import write_report

    write_report(run, samples)
