"""The `phinetune` command. Each verb is a thin wrapper over a library function of the same stage."""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer

from phinetune.errors import PhinetuneError
from phinetune.progress import console

app = typer.Typer(help="Fine-tune Microsoft Phi models (LoRA, QLoRA, full) with no silent misconfiguration.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

CONFIG_HELP = "A YAML run config (see configs/), followed by any number of dotted overrides like train.learning_rate=2e-5."


def split_args(args: Optional[List[str]]) -> tuple[Optional[str], list[str]]:
    """`[CONFIG] [key=value ...]`: the config is the one argument without '='."""
    args = list(args or [])
    config = args.pop(0) if args and "=" not in args[0] else None
    return config, args


def default_config_path() -> Path:
    return Path(str(resources.files("phinetune.assets").joinpath("default.yaml")))


def resolve_config(args: Optional[List[str]]):
    from phinetune.config import load_config

    config, overrides = split_args(args)
    return load_config(config or default_config_path(), overrides)


@app.command()
def train(args: Optional[List[str]] = typer.Argument(None, help=CONFIG_HELP, show_default=False)) -> None:
    """Fine-tune a model. With no arguments: the embedded tiny default (CPU, no network, about 3 minutes)."""
    from phinetune.train.recipe import train as run_train

    cfg = resolve_config(args)
    result = run_train(cfg)
    if result.first_eval_loss is not None:
        console.print(f"eval loss: {result.first_eval_loss:.4f} at step 0 -> {result.final_eval_loss:.4f} after {result.steps} steps")
    console.print(f"run folder: {result.run.path}  (next: phinetune generate {result.run.path} \"...\", phinetune merge {result.run.path} --out DIR)")


@app.command()
def merge(run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
          out: str = typer.Option(..., "--out", help="Folder for the merged model."),
          dtype: str = typer.Option("auto", help="Weights dtype of the merged model: auto, bf16, fp16 or fp32."),
          max_shard_size: str = typer.Option("2GB", help="Largest safetensors shard."),
          overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder.")) -> None:
    """Merge a LoRA/QLoRA run into a standalone model (QLoRA merges into a dequantized base)."""
    from phinetune.export.merge import merge_run

    merge_run(run, out, dtype, max_shard_size, overwrite)


@app.command()
def generate(target: str = typer.Argument(..., help="A run folder, a merged folder, or a base model id."),
             prompt: Optional[str] = typer.Argument(None, help="One prompt (omit when using --input)."),
             input: Optional[Path] = typer.Option(None, "--input", help="JSONL of prompts: {\"prompt\": ...} or {\"messages\": [...]} per line."),
             output: Optional[Path] = typer.Option(None, "--output", help="Write answers as JSONL here."),
             max_new_tokens: int = typer.Option(256, help="Most tokens to generate."),
             temperature: float = typer.Option(0.0, help="0 = greedy."),
             top_k: int = typer.Option(0, help="Top-k sampling (0 = off)."),
             top_p: float = typer.Option(1.0, help="Nucleus sampling."),
             seed: Optional[int] = typer.Option(None, help="Sampling seed."),
             batch_size: int = typer.Option(8, help="Prompts per generation batch."),
             dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
             quant: str = typer.Option("none", help="none or nf4.")) -> None:
    """Answer one prompt, or a JSONL file of prompts, with the model's chat template."""
    from phinetune.infer.batch import run_generate

    run_generate(target, prompt, input, output, max_new_tokens, temperature, top_k, top_p, seed, batch_size, dtype, quant)


@app.command()
def chat(target: str = typer.Argument(..., help="A run folder, a merged folder, or a base model id."),
         system: Optional[str] = typer.Option(None, help="Optional system prompt."),
         max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.7), top_p: float = typer.Option(0.95),
         dtype: str = typer.Option("auto"), quant: str = typer.Option("none")) -> None:
    """Chat interactively; tokens stream as they are generated."""
    from phinetune.infer.chat import chat_loop
    from phinetune.infer.generate import Sampling
    from phinetune.infer.loading import load_for_inference

    loaded = load_for_inference(target, dtype, quant)
    chat_loop(loaded, Sampling(max_new_tokens, temperature, 0, top_p), system)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except PhinetuneError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


# ---- model knowledge: check, inspect, plan (issue 3) ------------------------------------------------------

@app.command()
def check(args: Optional[List[str]] = typer.Argument(None, help=CONFIG_HELP, show_default=False),
          save: Optional[Path] = typer.Option(None, "--save", help="Also write the report as JSON here.")) -> None:
    """Load, read the data and attach the adapter exactly as `train` would, print the pre-flight, and stop.

    Exits non-zero when the pre-flight finds a problem (the `preflight.*` overrides apply)."""
    from phinetune.train.check import check_config

    check_config(resolve_config(args), save)
    console.print("[bold green]pre-flight passed[/bold green]: nothing silently misconfigured was found")


@app.command()
def inspect(model: str = typer.Argument(..., help="A spec key (phi3.5-moe), a Phi Hub id, a tiny-* name, or a config.json / model folder.")) -> None:
    """Print the model analysis: architecture, parameters (total and active per token), attention layout,
    context and rope scaling, vocab, special tokens, LoRA target presets and dtypes. Needs no weights."""
    from phinetune.models.inspect import analysis, load_facts

    for label, value in analysis(load_facts(model)).items():
        console.print(f"[bold]{label:>15}[/bold]  {value}", highlight=False)


@app.command()
def plan(model: Optional[str] = typer.Argument(None, help="A spec key, Phi Hub id or config.json (as for inspect)."),
         method: str = typer.Option("lora", help="lora, qlora or full."),
         seq: int = typer.Option(2048, help="Tokens per sequence."),
         batch: int = typer.Option(1, help="Sequences per micro-batch."),
         grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward."),
         r: int = typer.Option(16, "--r", help="LoRA rank."),
         targets: str = typer.Option("all-linear", help="LoRA target preset."),
         validate: bool = typer.Option(False, "--validate", help="Measure peak memory of small random models on CPU and print the estimate's error.")) -> None:
    """Which GPU do I need? Memory breakdown and the smallest common GPU that fits."""
    from phinetune.models import plan as planner
    from phinetune.models.inspect import load_facts

    if validate:
        return _print_validation()
    if model is None:
        raise PhinetuneError("plan needs a MODEL (a spec key such as phi3.5-mini, a Hub id or a config.json), or --validate")
    facts = load_facts(model)
    dtype = "fp32" if "bf16" not in facts.spec.dtypes else "bf16"
    est = planner.estimate(facts, method, seq, batch, grad_checkpointing, dtype, r, targets)
    console.print(f"{facts.spec.key}: {method}, seq {seq} x batch {batch}, {dtype}, gradient checkpointing {'on' if grad_checkpointing else 'off'}")
    for part, size in est.parts.items():
        console.print(f"  {part:<12} {size / planner.GiB:8.2f} GiB")
    console.print(f"  {'total':<12} {est.total / planner.GiB:8.2f} GiB   (activations with checkpointing "
                  f"{'off' if grad_checkpointing else 'on'}: {est.activations_other / planner.GiB:.2f} GiB)")
    console.print(f"  needed       {est.needed() / planner.GiB:8.2f} GiB   (+{planner.MARGIN:.0%} fragmentation, +{planner.OVERHEAD_GIB:g} GiB CUDA context)")
    gpu, gpu_dtype = planner.smallest_gpu(facts, method, seq, batch, grad_checkpointing, facts.spec.refused_dtypes, r, targets)
    if gpu is None:
        console.print("smallest GPU: none of the common single GPUs fits; try --method qlora, --grad-checkpointing, a shorter --seq, or several GPUs")
        raise typer.Exit(1)
    console.print(f"smallest GPU: {gpu.name}" + (f" (runs in {gpu_dtype}: no bf16 on this card)" if gpu_dtype != dtype else ""))


def _print_validation() -> None:
    from phinetune.models.plan_measure import validate

    console.print("plan estimate vs measured peak memory (one steady-state training step, fp32 on CPU, peak RSS):")
    for m in validate():
        console.print(f"  {m.name:<13} {m.method:<5} seq {m.seq} x {m.batch}{' ckpt' if m.checkpointing else '     '}  "
                      f"estimate {m.estimate_bytes / 2**20:8.1f} MiB  measured {m.measured_bytes / 2**20:8.1f} MiB  error {m.error:+.1%}")
