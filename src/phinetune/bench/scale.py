"""`phinetune bench train --nproc 1,2`: phinetune's training throughput and memory as the process count grows.

The same workload (the phinetune side of `bench train`: same model, data and global batch) is trained once per
process count, each through the launcher `phinetune train --nproc N` uses (train/distributed/launch.py: torchrun on CPU,
accelerate launch on GPUs; `--accelerate-config` picks DDP, FSDP2 or DeepSpeed as for training). The global
batch is held fixed (each rank's batch is the workload's divided by N), so every count trains the same steps
on the same tokens, which the report checks. Per count: tokens/s (all real tokens over the slowest rank's
time) and the fullest rank's peak memory, and per rank its tokens/s and peak memory (RSS on CPU, allocated GPU
memory on CUDA). The JSON report keys them `nproc-N`, like bench train's sides. The machine's
load average is recorded at the start and the end: on a shared machine the figures mean little when it moved.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from phinetune.bench.machine import LoadWindow, machine
from phinetune.bench.workloads import get_workload, materialize
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.progress import console, say


def parse_nproc(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"bench train --nproc must be comma-separated process counts like 1,2 (got {text!r})")
    return counts


def run_count(n: int, spec: dict, work: Path, accelerate_config: Path | None) -> list[dict]:
    """Train the workload on n processes; each rank's result."""
    from phinetune.train.distributed.launch import launch_command

    folder = work / f"nproc-{n}"
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    spec_file, log_file = folder / "spec.json", folder / "log.txt"
    spec_file.write_text(json.dumps({**spec, "work": str(folder)}))
    cmd, env = launch_command(
        n, [], accelerate_config, module=["-m", "phinetune.bench.scale_child", str(spec_file), str(results)]
    )
    env.update(PHINETUNE_QUIET="1", TOKENIZERS_PARALLELISM="false")
    with console.status(f"bench: training on {n} process{'es' if n > 1 else ''}"), open(log_file, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    ranks = sorted((json.loads(p.read_text()) for p in results.glob("rank-*.json")), key=lambda r: r["rank"])
    if proc.returncode != 0 or len(ranks) != n:
        raise PhinetuneError(
            f"bench: the {n}-process run failed (exit {proc.returncode}, {len(ranks)} of {n} ranks reported); "
            f"log {log_file}:\n{log_file.read_text(errors='replace')[-3000:]}"
        )
    return ranks


def summarize(n: int, ranks: list[dict], memory_key: str) -> dict:
    slowest = max(r["seconds"] for r in ranks)
    tokens = sum(r["tokens"] for r in ranks)
    return {
        "nproc": n,
        "engine": ranks[0]["engine"],
        "sharded": ranks[0]["sharded"],
        "dtype": ranks[0].get("dtype"),
        "seconds": slowest,
        "tokens": tokens,
        "tokens_per_s": tokens / slowest,
        "memory": max(r[memory_key] for r in ranks),  # the fullest rank's
        "steps": ranks[0]["steps"],
        "losses": ranks[0]["losses"],
        "ranks": [
            {
                "rank": r["rank"],
                "tokens": r["tokens"],
                "seconds": r["seconds"],
                "tokens_per_s": r["tokens"] / r["seconds"],
                "peak_memory": r[memory_key],
            }
            for r in ranks
        ],
    }


def print_table(rows: list[dict], memory_name: str) -> None:
    say(
        f"{'nproc':>5} {'engine':>9} {'tokens/s':>10} {'speedup':>8} {'steps':>6} {'final loss':>11}  per rank: tokens/s, {memory_name}"
    )
    first = rows[0]["tokens_per_s"]
    for r in rows:
        per_rank = "; ".join(
            f"rank {x['rank']} {x['tokens_per_s']:.0f} tok/s {x['peak_memory'] / 2**30:.2f} GiB" for x in r["ranks"]
        )
        final = f"{r['losses'][-1]:11.4f}" if r["losses"] else f"{'-':>11}"
        say(
            f"{r['nproc']:5d} {r['engine']:>9} {r['tokens_per_s']:10.1f} {r['tokens_per_s'] / first:7.2f}x {r['steps']:6d} {final}  {per_rank}"
        )


def bench_scale(
    nprocs: list[int],
    workload: str = "tiny",
    accelerate_config: Path | None = None,
    out: str | None = None,
    rows: int | None = None,
    realdata: str | None = None,
    work_dir: str | None = None,
) -> dict:
    from phinetune.bench.train import token_ids

    w = get_workload(workload)
    uneven = [n for n in nprocs if w.batch_size % n]
    if uneven:
        raise ConfigError(
            f"bench train --nproc {','.join(map(str, uneven))}: the {workload} workload's batch of {w.batch_size} does not "
            "split evenly over that many processes (the global batch is held fixed)"
        )
    work = Path(work_dir or tempfile.mkdtemp(prefix="phinetune-bench-scale-"))
    with console.status(f"bench: building the {workload} model and data"):
        m = materialize(w, work / "workload", realdata, rows)
    say(f"workload {workload}: {m.note}; global batch {w.batch_size} sequences, held fixed for every process count")
    ids = token_ids(m)
    window = LoadWindow()
    results = []
    for n in nprocs:
        spec = {
            "workload": asdict(replace(w, batch_size=w.batch_size // n)),
            "model_dir": m.model_dir,
            "data_file": m.data_file,
            "parity": False,
            "token_ids": ids,
        }
        results.append(
            summarize(n, run_count(n, spec, work, accelerate_config), "peak_gpu" if w.device == "cuda" else "peak_rss")
        )
    window.close()
    if len({(r["tokens"], r["steps"]) for r in results}) != 1:
        raise PhinetuneError(
            "bench: the process counts trained different work: "
            + ", ".join(f"{r['nproc']} processes {r['tokens']} tokens in {r['steps']} steps" for r in results)
        )
    print_table(results, "peak GPU" if w.device == "cuda" else "peak RSS")
    say(window.describe() + ("" if window.steady else " (the load moved: compare the counts with care)"))
    # results keyed like bench train's sides ("nproc-N"), so readers of its report (bench/gpu_check.py) read this one too
    report = {
        "workload": m.to_json(),
        "accelerate_config": str(accelerate_config) if accelerate_config else None,
        "results": {f"nproc-{r['nproc']}": r for r in results},
        "load": window.to_json(),
        "machine": machine(),
    }
    report["workload"].pop("lengths", None)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")
    return report
