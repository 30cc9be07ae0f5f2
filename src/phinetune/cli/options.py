"""Every option that more than one verb takes, declared once here with its help, its choices and one default.

A verb takes an option by its annotation (`dtype: DType = LOAD.dtype`). The defaults are the library's own:
`Sampling()` for the sampling flags, `LoadOptions()` for --dtype/--quant. Choices are typer's (a Literal of the
library's names): `--help` lists them and a wrong value is typer's one-line error. This module imports only
torch-free, pydantic-free library modules, so every command starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from phinetune.data.reasoning import REASONING_VIEWS
from phinetune.errors import PhinetuneError
from phinetune.infer.sampling import Sampling
from phinetune.models.load_options import DTYPE_CHOICES, DTYPE_SPELLINGS, QUANTS, LoadOptions

SAMPLING, LOAD = Sampling(), LoadOptions()  # the defaults of the sampling and loading options

# ------------------------------------------------ [CONFIG] [key=value ...]: train, check, launch-template, synth

CONFIG_HELP = (
    "A YAML run config (see configs/), followed by any number of dotted overrides like train.learning_rate=2e-5."
)
ConfigArgs = Annotated[list[str] | None, typer.Argument(help=CONFIG_HELP, show_default=False)]
ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config", help="The YAML config, named as other toolkits do (the same as giving it first, positionally)."
    ),
]


def split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key=value ...]`: the config is the one argument without '='."""
    args = list(args or [])
    config = args.pop(0) if args and "=" not in args[0] else None
    return config, args


def with_config_option(args: list[str] | None, config: str | None) -> list[str]:
    """`--config x.yaml` puts the config where it is read positionally: first, before the overrides."""
    args = list(args or [])
    if config is None:
        return args
    given, _ = split_args(args)
    if given is not None:
        raise PhinetuneError(f"two configs given, {given} and --config {config}; pass one")
    return [config, *args]


def resolve_config(args: list[str] | None):
    """The RunConfig of `[CONFIG] [key=value ...]`; no CONFIG: the embedded default (a tiny model, the riddles)."""
    from phinetune.config.load import default_config_path, load_config

    config, overrides = split_args(args)
    return load_config(config or default_config_path(), overrides)


# ------------------------------------------------ how a model is loaded: generate, chat, compare, serve, merge

DType = Annotated[
    Literal[DTYPE_SPELLINGS], typer.Option("--dtype", case_sensitive=False, help=f"Weights dtype: {DTYPE_CHOICES}.")
]
Quant = Annotated[Literal[QUANTS], typer.Option("--quant", help="nf4: the weights in 4-bit NF4; none: as they are.")]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        help=(
            "For a run folder: 'last' (or step-N) uses that training checkpoint instead of the final adapter, e.g. of an "
            "interrupted run; 'best' the checkpoint train.keep scored best (lowest eval loss, else its first task). "
            "serve takes it for one run folder only."
        ),
    ),
]
Checkpoints = Annotated[
    str | None,
    typer.Option(
        "--checkpoints",
        help=(
            "'all' (base, every kept checkpoint, last) or a list like base,step-10,best,last: each one too (eval: task "
            "score against step, plotted next to the loss curves; compare: one column each, RUN/compare_checkpoints.md)."
        ),
    ),
]

# ------------------------------------------------ how a reply is sampled: generate, chat, compare, judge

MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate per reply.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 = greedy.")]
TopK = Annotated[int, typer.Option("--top-k", help="Top-k sampling (0 = off).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Sampling seed.")]
PROMPT_BATCH = 8  # as infer/generate.run_generate and infer/compare.compare_run take it
PromptBatch = Annotated[int, typer.Option("--batch-size", help="Prompts per generation batch.")]
Prompts = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help=(
            'JSONL of prompts ({"prompt"} or {"messages"}, optional "reference"); default: the run\'s held-out prompts.'
        ),
    ),
]
REASONING = REASONING_VIEWS[0]  # show: the whole reply
Reasoning = Annotated[
    Literal[REASONING_VIEWS],
    typer.Option("--reasoning", help="A reply's <think>...</think> trace: show, or hide (final answer only)."),
]


# ------------------------------------------------ comma-separated lists


def comma_list(item: Callable[[str], object] = str, example: str = "a,b") -> Callable[[str], tuple]:
    """The one reader of a comma-separated option: `1,8` -> (1, 8); empty items are skipped, and an item `item`
    cannot read (or no item at all) is typer's one-line error."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(item(part.strip()) for part in str(text).split(",") if part.strip())
        except ValueError:
            values = ()
        if not values:
            kind = "integers" if item is int else "values"
            raise typer.BadParameter(f"{text!r} is not a comma-separated list of {kind} like {example}")
        return values

    return parse


GgufTypes = Annotated[
    tuple,
    typer.Option(
        "--quant",
        parser=comma_list(example="f16,q8_0"),
        metavar="TYPES",
        help=("GGUF types, comma-separated: f16, bf16, q8_0, q4_0, f32 (ollama: one)."),
    ),
]
GgufType = Annotated[str, typer.Option("--quant", help="GGUF type for --gguf: f16, bf16, q8_0, q4_0 or f32.")]
BenchDTypes = Annotated[
    tuple,
    typer.Option(
        "--dtype",
        parser=comma_list(example="bf16,fp32"),
        metavar="DTYPES",
        help="Comma-separated: bf16, fp16, fp32, nf4.",
    ),
]
