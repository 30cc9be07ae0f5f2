"""`phinetune generate`, `chat` and `compare`: answers from a run, a merged folder or a model."""

from __future__ import annotations

from pathlib import Path

import typer

from phinetune.cli.app import app
from phinetune.cli.options import (
    LOAD,
    PROMPT_BATCH,
    REASONING,
    SAMPLING,
    Checkpoint,
    Checkpoints,
    DType,
    MaxNewTokens,
    PromptBatch,
    Prompts,
    Quant,
    Reasoning,
    Seed,
    Temperature,
    TopK,
    TopP,
)

TARGET_HELP = "A run folder, a merged folder, or a base model id."


@app.command()
def generate(
    target: str = typer.Argument(..., help=TARGET_HELP),
    prompt: str | None = typer.Argument(None, help="One prompt (omit when using --input)."),
    input: Path | None = typer.Option(
        None, "--input", help='JSONL of prompts: {"prompt": ...} or {"messages": [...]} per line.'
    ),
    output: Path | None = typer.Option(None, "--output", help="Write answers as JSONL here."),
    max_new_tokens: MaxNewTokens = SAMPLING.max_new_tokens,
    temperature: Temperature = SAMPLING.temperature,
    top_k: TopK = SAMPLING.top_k,
    top_p: TopP = SAMPLING.top_p,
    seed: Seed = SAMPLING.seed,
    batch_size: PromptBatch = PROMPT_BATCH,
    dtype: DType = LOAD.dtype,
    quant: Quant = LOAD.quant,
    checkpoint: Checkpoint = None,
    reasoning: Reasoning = REASONING,
) -> None:
    """Answer one prompt, or a JSONL file of prompts, with the model's chat template."""
    from phinetune.infer.sampling import Sampling
    from phinetune.models.load_options import LoadOptions
    from phinetune.runs.targets import check_source

    check_source(target, checkpoint=checkpoint)
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)  # validated before the slow load
    from phinetune.infer.generate import run_generate

    run_generate(target, prompt, input, output, sampling, batch_size, LoadOptions(dtype, quant), checkpoint, reasoning)


@app.command()
def chat(
    target: str = typer.Argument(..., help=TARGET_HELP),
    system: str | None = typer.Option(None, help="Optional system prompt."),
    max_new_tokens: MaxNewTokens = SAMPLING.max_new_tokens,
    temperature: Temperature = SAMPLING.temperature,
    top_k: TopK = SAMPLING.top_k,
    top_p: TopP = SAMPLING.top_p,
    seed: Seed = SAMPLING.seed,
    dtype: DType = LOAD.dtype,
    quant: Quant = LOAD.quant,
    checkpoint: Checkpoint = None,
    reasoning: Reasoning = REASONING,
) -> None:
    """Chat interactively; tokens stream as they are generated."""
    from phinetune.infer.sampling import Sampling
    from phinetune.models.load_options import LoadOptions
    from phinetune.runs.targets import check_source

    check_source(target, checkpoint=checkpoint)
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)  # validated before the slow load
    from phinetune.infer.chat import run_chat

    run_chat(target, sampling, LoadOptions(dtype, quant), checkpoint, system, reasoning)


@app.command()
def compare(
    run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
    prompts: Prompts = None,
    n: int = typer.Option(5, "--n", help="How many held-out prompts to take when --prompts is not given."),
    out: Path | None = typer.Option(None, "--out", help="Markdown file (default RUN/compare.md)."),
    max_new_tokens: MaxNewTokens = SAMPLING.max_new_tokens,
    temperature: Temperature = SAMPLING.temperature,
    top_k: TopK = SAMPLING.top_k,
    top_p: TopP = SAMPLING.top_p,
    seed: Seed = SAMPLING.seed,
    batch_size: PromptBatch = PROMPT_BATCH,
    dtype: DType = LOAD.dtype,
    quant: Quant = LOAD.quant,
    checkpoints: Checkpoints = None,
) -> None:
    """Base vs fine-tuned answers to the same prompts, side by side (terminal table + Markdown)."""
    from phinetune.infer.sampling import Sampling
    from phinetune.models.load_options import LoadOptions
    from phinetune.runs.targets import check_run

    check_run(
        run,
        "--checkpoints",
        final=not checkpoints,
        use_checkpoint="pass --checkpoints base,{name} to compare the base with its last checkpoint",
    )
    sampling, load = Sampling(max_new_tokens, temperature, top_k, top_p, seed), LoadOptions(dtype, quant)
    from phinetune.infer.compare import compare_checkpoints, compare_run

    if checkpoints:
        compare_checkpoints(run, checkpoints, prompts, n, sampling, batch_size, load, out)
    else:
        compare_run(run, prompts, n, sampling, batch_size, load, out)
