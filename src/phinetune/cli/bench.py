"""`phinetune bench infer|serve|train`: speed and memory, each against a baseline measured in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from phinetune.bench.sweep import CHECKPOINTING, WIDTHS
from phinetune.bench.workloads import WORKLOADS
from phinetune.cli.app import group
from phinetune.cli.options import BenchDTypes, comma_list

bench_app = group(
    "bench", "Speed and memory benchmarks (training against TRL with padding and a tuned TRL, inference per dtype)."
)
Workload = Literal[tuple(WORKLOADS)]
Integers = comma_list(int, "1,8")


@bench_app.command("infer")
def bench_infer(
    target: str | None = typer.Argument(
        None, help="A run folder, a merged folder, or a base model id (or use --workload)."
    ),
    workload: Workload | None = typer.Option(
        None,
        help="Instead of TARGET, a random-weight model built here: cpu-decode "
        "(Phi-3-mini width, 2 layers) or tiny (seconds; for tests).",
    ),
    dtype: BenchDTypes = "bf16,fp32,nf4",
    prompt_tokens: int = typer.Option(128),
    new_tokens: int = typer.Option(64),
    batch_sizes: tuple = typer.Option("1,8", parser=Integers, metavar="SIZES", help="Comma-separated batch sizes."),
    out: Path = typer.Option(Path("bench-infer.json"), "--out", help="JSON results file."),
) -> None:
    """Memory, prefill (TTFT, tokens/s) and decode tokens/s per dtype and batch size, and decode's share of the memory bandwidth measured in the same run."""
    from phinetune.errors import PhinetuneError

    if (target is None) == (workload is None):
        raise PhinetuneError(
            "bench infer needs either a TARGET (run folder, merged folder or model id) or --workload NAME, not both"
        )
    if target is not None:
        from phinetune.runs.targets import check_source

        check_source(target)
    from phinetune.bench.infer import BenchSettings, bench_workload
    from phinetune.bench.infer import bench_infer as run_bench

    settings = BenchSettings(prompt_tokens, new_tokens, batch_sizes)
    if workload is not None:
        bench_workload(workload, list(dtype), settings, out)
    else:
        run_bench(target, list(dtype), settings, out)


@bench_app.command("serve")
def bench_serve(
    target: str | None = typer.Argument(
        None, help="A run folder, merged folder or model id to serve here (or use --url)."
    ),
    url: str | None = typer.Option(None, help="A running server's base URL instead, e.g. http://127.0.0.1:8000."),
    concurrency: tuple = typer.Option(
        "1,8,32",
        parser=comma_list(int, "1,8,32"),
        metavar="LEVELS",
        help="Comma-separated numbers of concurrent clients.",
    ),
    requests: int = typer.Option(64, help="Requests per concurrency level (at least one per client)."),
    max_tokens: int = typer.Option(32, help="max_tokens of each request."),
    model: str | None = typer.Option(None, help="The model id to ask for (default: the server's first)."),
    api_key: str | None = typer.Option(None, help="For --url servers that require one."),
    out: Path | None = typer.Option(None, "--out", help="Also write the rows as JSON here."),
) -> None:
    """HTTP throughput and p50/p95 latency of `phinetune serve` at several concurrency levels."""
    from phinetune.bench.serve import bench_serve as run_bench

    run_bench(target, url, concurrency, requests, max_tokens, model, api_key, out=out)


@bench_app.command("train")
def bench_train(
    workload: Workload = typer.Option(
        "cpu-reference",
        help="cpu-reference, gpu-reference (CUDA, QLoRA), gpu-reference-bf16 (CUDA, bf16 LoRA) or tiny (seconds; for tests).",
    ),
    out: str | None = typer.Option(None, "--out", help="Write every figure as JSON here."),
    parity: bool = typer.Option(
        False,
        help="Run both sides in fp32 on the same batches in the same order (no packing) and print the two loss curves.",
    ),
    rows: int | None = typer.Option(None, help="Use only the first N data rows (default: the workload's)."),
    realdata: str | None = typer.Option(
        None,
        help="Folder with the Phi-3 tokenizer and guanaco data (default: $PHINETUNE_REALDATA or ../shared/realdata; else a synthetic fallback).",
    ),
    work_dir: str | None = typer.Option(None, help="Where to write the model, data and logs (default: a temp folder)."),
    profile: bool = typer.Option(
        False,
        help="After the timed run, profile phinetune's steps and print how a step's time splits (matmuls, attention, LoRA, loss, optimizer, data, other).",
    ),
    sides: tuple | None = typer.Option(
        None,
        parser=comma_list(example="baseline,phinetune"),
        metavar="SIDES",
        help="Comma-separated sides to run: baseline (TRL fp32 with padding; QLoRA on the GPU workload), trl-tuned, phinetune (default: all three).",
    ),
    nproc: str | None = typer.Option(
        None,
        "--nproc",
        help="Instead: phinetune alone on each process count, e.g. 1,2 (same workload and global batch): tokens/s and peak memory per rank.",
    ),
    accelerate_config: Path | None = typer.Option(
        None,
        "--accelerate-config",
        help="With --nproc: the accelerate config each count launches with (DDP by default; e.g. configs/accelerate/fsdp.yaml).",
    ),
    sweep: bool = typer.Option(
        False,
        "--sweep",
        help="Instead: one phinetune training step per (tokens x layers) point; tokens/s, peak memory and plan's estimate, as a table, JSON (--out) and PNG beside it.",
    ),
    seq: str = typer.Option(
        "512,2048,8192",
        "--seq",
        help="--sweep: comma-separated tokens per row (32768 is optional: ~17 min for its 4-layer point).",
    ),
    layers: str = typer.Option("1,2,4", "--layers", help="--sweep: comma-separated decoder layer counts."),
    width: Literal[tuple(WIDTHS)] = typer.Option(
        "reference", "--width", help="--sweep: reference (Phi-3-mini width) or tiny (seconds; for tests)."
    ),
    checkpointing: Literal[CHECKPOINTING] = typer.Option(
        "auto", "--checkpointing", help="--sweep: gradient checkpointing auto (as train decides), on or off."
    ),
) -> None:
    """Train with phinetune, TRL with padding and a tuned TRL on identical work; print tokens/s, memory, MFU, losses, ratios, load."""
    if sweep:  # cost as the work grows (bench/sweep.py)
        from phinetune.bench.sweep import bench_sweep, parse_grid

        bench_sweep(width, parse_grid(seq, "seq"), parse_grid(layers, "layers"), out, work_dir, checkpointing)
        return
    if nproc is not None:  # the process-count scan (bench/scale.py)
        from phinetune.bench.scale import bench_scale, parse_nproc

        bench_scale(parse_nproc(nproc), workload, accelerate_config, out, rows, realdata, work_dir)
        return
    if accelerate_config is not None:
        from phinetune.errors import PhinetuneError

        raise PhinetuneError(
            "bench train --accelerate-config applies to the process-count scan; pass --nproc too (e.g. --nproc 1,2)"
        )
    from phinetune.bench.train import bench_train as run_bench

    run_bench(workload, out, parity, rows, realdata, work_dir, profile=profile, sides=sides)
