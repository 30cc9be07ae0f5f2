"""`phinetune data inspect`: training data as the model will see it, before training on it."""

from __future__ import annotations

from pathlib import Path

import typer

from phinetune.cli.app import group

data_app = group("data", "Look at training data before training on it.")

MODEL_ADVICE = (
    "--model takes the model whose tokenizer and chat template to use: pass the one it was trained from, --model {base}"
)


@data_app.command("inspect")
def data_inspect(
    data: str = typer.Argument(..., help="A data file or folder, a Hub dataset id, or builtin:riddles."),
    model: str = typer.Option(
        ...,
        "--model",
        help="Whose tokenizer and chat template: tiny-*, a Hub id in the local cache, or a local folder.",
    ),
    format: str = typer.Option("auto", "--format", help="Record format (auto detects when unambiguous)."),
    column: list[str] = typer.Option(
        [], "--column", help="Field mapping OURS=THEIRS, repeatable (e.g. prompt=QUESTIONS)."
    ),
    max_length: int = typer.Option(512, help="Tokens per sample (longer ones are truncated)."),
    mask: str = typer.Option("assistant", help="assistant, last_assistant or all."),
    reasoning: str = typer.Option(
        "train", help="Reasoning traces: train (default) or answer (train only the final answer)."
    ),
    split: str = typer.Option("train", help="Split of a Hub dataset."),
    limit: int | None = typer.Option(None, help="Only the first N records."),
    skip_bad_rows: bool = typer.Option(False, help="Skip invalid rows (summarised) instead of stopping."),
    samples: int = typer.Option(3, help="Rendered samples to show with their masks."),
    spec: str | None = typer.Option(None, help="Model spec key when it cannot be looked up from --model."),
    fold_system: bool = typer.Option(False, help="Fold a system message into the first user turn (data.fold_system)."),
    out: Path = typer.Option(
        Path("data-inspect"), "--out", help="Folder for report.json, lengths.png/.txt, samples.txt."
    ),
    objective: str = typer.Option(
        "sft",
        "--objective",
        help="sft, or dpo/ipo/orpo/simpo (preference pairs) / kto (unpaired): chosen/rejected lengths and overlap.",
    ),
    against: str | None = typer.Option(
        None,
        "--against",
        help="Benchmarks to check the data against for contamination (13-gram overlap + MinHash near-duplicates), e.g. arc_easy,hellaswag,piqa,winogrande.",
    ),
    against_dir: Path | None = typer.Option(
        None, "--against-dir", help="Folder with the official eval files (as eval --data-dir); default: the Hub."
    ),
) -> None:
    """Counts, token-length histogram, share trained/truncated, samples with masks, duplicates; with --against, benchmark overlaps."""
    from phinetune.runs.targets import check_source

    check_source(model, run_advice=MODEL_ADVICE, tokenizer_only=True)
    if objective != "sft":
        from phinetune.data.preference import report_preferences

        report_preferences(data, objective, model, spec, max_length, limit, skip_bad_rows, split, out)
        return
    from phinetune.config.explain import from_flags
    from phinetune.config.schema import DataConfig
    from phinetune.data.inspect import DATA_FLAGS, report_data
    from phinetune.eval.tasks import parse_tasks

    cfg = from_flags(
        DataConfig,
        DATA_FLAGS,
        train=data,
        format=format,
        columns=parse_columns(column),
        max_length=max_length,
        mask=mask,
        split=split,
        limit=limit,
        skip_bad_rows=skip_bad_rows,
        fold_system=fold_system,
        reasoning=reasoning,
    )
    benchmarks = parse_tasks(against) if against else []  # a typo fails before any tokenizing
    report_data(cfg, model, spec, samples, out)
    if benchmarks:
        from phinetune.eval.contamination import check_data

        check_data(cfg, benchmarks, against_dir, out)


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """--column prompt=QUESTIONS -> {prompt: QUESTIONS}."""
    from phinetune.errors import ConfigError

    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError(f"--column {bad[0]!r}: expected OURS=THEIRS, e.g. --column prompt=QUESTIONS")
    return dict(p.split("=", 1) for p in pairs)
