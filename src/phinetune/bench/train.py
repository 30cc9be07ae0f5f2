"""`phinetune bench train`: phinetune vs the seeds' recipe (TRL SFTTrainer) on identical data, model and seed.

Each side runs in its own subprocess (peak RSS is that process's own). Printed for both: tokens/s over real
(non-pad) tokens, peak memory, MFU against the matmul peak measured in the same run, first and final loss,
and the ratios. A side that did not train (zero gradients or unchanged LoRA weights) fails the bench.

MFU counts model FLOPs per real token: 4 x frozen matmul parameters (forward + input gradient; frozen
weights need no weight gradient) + 6 x LoRA parameters + 12 x hidden x layers per attended (query, key) pair.
Recomputation (gradient checkpointing) and padding are not counted: they are cost, not useful work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from phinetune.bench.machine import machine
from phinetune.bench.peak import measured_peaks
from phinetune.bench.workloads import WORKLOADS, Materialized, Workload, materialize
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.extras import require
from phinetune.progress import console

SIDES = ("baseline", "phinetune")


def model_flops(w: Workload, lengths: list[int]) -> float:
    d, kv = w.hidden_size, w.hidden_size * w.num_kv_heads // w.num_heads
    per_layer = d * (d + 2 * kv) + d * d + d * 2 * w.intermediate_size + w.intermediate_size * d
    frozen = w.num_layers * per_layer + d * w.vocab_size
    lora_shapes = {"qkv_proj": (d, d + 2 * kv), "o_proj": (d, d), "gate_up_proj": (d, 2 * w.intermediate_size),
                   "down_proj": (w.intermediate_size, d)}
    lora = w.num_layers * sum(w.lora_r * (i + o) for t, (i, o) in lora_shapes.items() if t in w.targets)
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    return tokens * (4 * frozen + 6 * lora) + 12 * d * w.num_layers * pairs


def token_ids(m: Materialized) -> list[list[int]]:
    """The ids both sides train on: phinetune's own rendering of each text (text + eos, truncated)."""
    from transformers import AutoTokenizer

    from phinetune.data.render import render_sample

    tokenizer = AutoTokenizer.from_pretrained(m.model_dir)
    texts = [json.loads(line)["text"] for line in Path(m.data_file).read_text(encoding="utf-8").splitlines()]
    return [render_sample(tokenizer, {"text": t}, m.workload.max_length).input_ids for t in texts]


def parity_order(ids: list[list[int]], w: Workload) -> list[list[int]]:
    """The samples in phinetune's (seeded) batch order, so the baseline, read sequentially, sees the same batches."""
    from phinetune.data.packing import batches

    return [ids[i] for group in batches(list(range(len(ids))), w.batch_size, w.seed, 0) for i in group]


def run_side(side: str, spec: dict, work: Path) -> dict:
    spec_file, result_file, log_file = work / f"{side}.spec.json", work / f"{side}.result.json", work / f"{side}.log"
    spec_file.write_text(json.dumps({**spec, "work": str(work / side)}))
    env = {**os.environ, "PHINETUNE_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    with console.status(f"bench: training {side}"), open(log_file, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "phinetune.bench.train_child", side, str(spec_file), str(result_file)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not result_file.exists():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise PhinetuneError(f"bench: the {side} run failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    return json.loads(result_file.read_text())


def check_trained(side: str, result: dict) -> None:
    proof = result["proof"]
    if proof["lora_tensors"] == 0 or proof["zero_grad_tensors"] or proof["unchanged_tensors"]:
        raise PhinetuneError(f"bench: the {side} run did not train: {proof['lora_tensors']} LoRA tensors, "
                             f"zero gradients in {proof['zero_grad_tensors'][:3]}, unchanged {proof['unchanged_tensors'][:3]}")


def summarize(results: dict, flops: float, peaks: dict, w: Workload) -> dict:
    peak = max(peaks.values())
    memory_key = "peak_gpu" if w.device == "cuda" else "peak_rss"
    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["mfu"] = flops / r["seconds"] / peak
        r["memory"] = r[memory_key]
    base, fast = results["baseline"], results["phinetune"]
    ratios = {"speed": fast["tokens_per_s"] / base["tokens_per_s"], "memory": fast["memory"] / base["memory"]}
    ratios["meets_targets"] = ratios["speed"] >= w.target_speedup and ratios["memory"] <= w.target_memory
    return ratios


def say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def print_table(results: dict, ratios: dict, peaks: dict, w: Workload, memory_name: str) -> None:
    say(f"matmul peak measured now: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s (MFU uses the higher)")
    say(f"{'':10} {'dtype':>8} {'tokens/s':>10} {memory_name:>12} {'MFU':>7} {'first loss':>11} {'final loss':>11} {'steps':>6}")
    for side in SIDES:
        r = results[side]
        say(f"{side:10} {r['dtype']:>8} {r['tokens_per_s']:10.1f} {r['memory'] / 2**30:9.2f} GiB {100 * r['mfu']:6.1f}% "
                      f"{r['losses'][0]:11.4f} {r['losses'][-1]:11.4f} {len(r['losses']):6d}")
    verdict = "meets" if ratios["meets_targets"] else "MISSES"
    say(f"ratios: {ratios['speed']:.2f}x tokens/s, {ratios['memory']:.2f}x peak memory "
                  f"(targets >= {w.target_speedup}x and <= {w.target_memory}x: {verdict})")


def print_parity(results: dict) -> dict:
    a, b = results["baseline"]["losses"], results["phinetune"]["losses"]
    say("parity (both fp32, no packing, same batches in the same order, LoRA dropout 0):")
    say(f"{'step':>5} {'baseline':>10} {'phinetune':>10} {'diff':>10}")
    diffs = []
    for i, (x, y) in enumerate(zip(a, b), 1):
        diffs.append(abs(x - y))
        say(f"{i:5d} {x:10.4f} {y:10.4f} {y - x:+10.4f}")
    worst = max(diffs) if diffs else float("nan")
    say(f"largest |difference|: {worst:.2e} over {len(diffs)} steps (baseline {len(a)}, phinetune {len(b)} steps)")
    return {"max_abs_diff": worst, "steps": len(diffs), "same_steps": len(a) == len(b)}


def bench_train(workload: str = "cpu-reference", out: Optional[str] = None, parity: bool = False, rows: Optional[int] = None,
                realdata: Optional[str] = None, work_dir: Optional[str] = None) -> dict:
    if workload not in WORKLOADS:
        raise ConfigError(f"bench train --workload '{workload}' is unknown; choose one of {', '.join(WORKLOADS)}")
    w = WORKLOADS[workload]
    require("phinetune bench train", "bench", "trl", "psutil")  # the seeds' recipe it compares against is TRL's
    if w.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PhinetuneError(f"bench train --workload {workload} needs a CUDA GPU and none is visible")
    work = Path(work_dir or tempfile.mkdtemp(prefix="phinetune-bench-"))
    with console.status(f"bench: building the {workload} model and data"):
        m = materialize(w, work / "workload", realdata, rows)
    say(f"workload {workload}: {m.note}")
    ids = token_ids(m)
    spec = {"workload": asdict(w), "model_dir": m.model_dir, "data_file": m.data_file, "parity": parity,
            "token_ids": parity_order(ids, w) if parity else ids}
    peaks = measured_peaks(w.device)
    results = {side: run_side(side, spec, work) for side in SIDES}
    for side in SIDES:
        check_trained(side, results[side])
    if results["baseline"]["tokens"] != results["phinetune"]["tokens"]:
        raise PhinetuneError(f"bench: the two sides trained different token counts ({results['baseline']['tokens']} vs {results['phinetune']['tokens']})")
    lengths = [len(x) for x in ids]
    ratios = summarize(results, model_flops(w, lengths), peaks, w)
    print_table(results, ratios, peaks, w, "peak GPU" if w.device == "cuda" else "peak RSS")
    report = {"workload": m.to_json(), "parity": parity, "peaks_flops": peaks, "results": results, "ratios": ratios,
              "tokens": sum(lengths), "machine": machine()}
    report["workload"].pop("lengths", None)
    if parity:
        report["parity_check"] = print_parity(results)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")
    return report

