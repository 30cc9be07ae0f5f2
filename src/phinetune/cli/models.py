"""`phinetune inspect` and `plan`: what a model is, and which GPU a run of it needs; no weights are loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from phinetune.cli.app import app
from phinetune.models.plan import DEVICES, METHODS


@app.command()
def inspect(
    model: str = typer.Argument(
        ...,
        help="A spec key (phi3.5-moe), a Phi Hub id, a tiny-* name, a config.json / model folder, or a run folder (its base model).",
    ),
) -> None:
    """Print the model analysis: architecture, parameters (total and active per token), attention layout,
    context and rope scaling, vocab, special tokens, LoRA target presets and dtypes. Needs no weights."""
    from phinetune.models.inspect import print_analysis
    from phinetune.runs.targets import model_facts

    print_analysis(model_facts(model))


@app.command()
def plan(
    model: str | None = typer.Argument(
        None,
        help="A run config (.yaml: plans its model, method, data.max_length x train.batch_size, LoRA rank, targets, dropout and gradient checkpointing), or a spec key, Phi Hub id, config.json or run folder (as for inspect).",
    ),
    method: Literal[METHODS] | None = typer.Option(
        None, help="lora, qlora or full (default: the run config's, else lora)."
    ),
    seq: int | None = typer.Option(
        None, help="Tokens per sequence (default: the run config's data.max_length, else 2048)."
    ),
    batch: int | None = typer.Option(
        None, help="Sequences per micro-batch (default: the run config's train.batch_size, else 1)."
    ),
    grad_checkpointing: bool | None = typer.Option(
        None,
        "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute activations in backward (default: the run config's setting, else off).",
    ),
    r: int | None = typer.Option(None, "--r", help="LoRA rank (default: the run config's adapter.r, else 16)."),
    targets: str | None = typer.Option(
        None, help="LoRA target preset (default: the run config's adapter.targets, else all-linear)."
    ),
    validate: bool = typer.Option(
        False, "--validate", help="Measure peak memory of small random models on CPU and print the estimate's error."
    ),
    device: Literal[DEVICES] = typer.Option(
        "cpu", "--device", help="With --validate: cpu, or cuda (measure on the GPU, bf16)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="With --validate: only the tiny-phi3 cases (seconds; for smoke tests)."
    ),
    out: Path | None = typer.Option(None, "--out", help="With --validate: also write the measurements as JSON here."),
) -> None:
    """Which GPU do I need? Memory breakdown and the smallest common GPU that fits."""
    if validate:
        from phinetune.bench.plan import print_validation

        print_validation(device, quick, out)
        return
    from phinetune.models.plan import print_plan
    from phinetune.runs.targets import model_facts

    flags = dict(method=method, seq=seq, batch=batch, checkpointing=grad_checkpointing, r=r, targets=targets)
    if print_plan(model or "", flags, model_facts) is None:
        raise typer.Exit(1)
