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


bench_app = typer.Typer(help="Speed and memory benchmarks against the seeds' recipes, measured in the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("train")
def bench_train(workload: str = typer.Option("cpu-reference", help="cpu-reference, gpu-reference (CUDA) or tiny (seconds; for tests)."),
                out: Optional[str] = typer.Option(None, "--out", help="Write every figure as JSON here."),
                parity: bool = typer.Option(False, help="Run both sides in fp32 on the same batches in the same order (no packing) and print the two loss curves."),
                rows: Optional[int] = typer.Option(None, help="Use only the first N data rows (default: the workload's)."),
                realdata: Optional[str] = typer.Option(None, help="Folder with the Phi-3 tokenizer and guanaco data (default: $PHINETUNE_REALDATA or ../shared/realdata; else a synthetic fallback)."),
                work_dir: Optional[str] = typer.Option(None, help="Where to write the model, data and logs (default: a temp folder).")) -> None:
    """Train with phinetune and with the seeds' TRL SFTTrainer recipe on identical work; print tokens/s, memory, MFU, losses, ratios."""
    from phinetune.bench.train import bench_train as run_bench

    run_bench(workload, out, parity, rows, realdata, work_dir)
