"""`phinetune bench train`: phinetune vs two TRL baselines on identical data, model and seed.

The sides: `baseline`, TRL with padding (SFTTrainer, fp32 on CPU, padding to the longest sample); `trl-tuned`,
SFTTrainer as a user who knows it runs it (bf16 base, bf16 autocast, BFD packing with padding-free batches, fused
AdamW, Liger on CUDA; see train_child.run_trl_tuned); and `phinetune` with its defaults. Each side runs in its own
subprocess (peak RSS is that process's own), one after the other. Printed for each: tokens/s over real (non-pad)
tokens, peak memory, MFU against the matmul peak measured in the same run, first and final loss; then phinetune's
ratios against both baselines. A side that did not train (zero gradients or unchanged LoRA weights) fails it.

Every figure names its machine and its load: a LoadWindow (uptime's load averages) and the cores other
processes kept busy (machine.OthersShare) are recorded per side and for the whole run. A ratio is judged
("meets" / "MISSES") only when the other processes' share stayed within MAX_OTHERS_CHANGE cores between the
two sides compared; otherwise it prints "not judged: load changed (...)".

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

from phinetune.bench.machine import MAX_OTHERS_CHANGE, LoadWindow, OthersShare, machine
from phinetune.bench.peak import measured_peaks
from phinetune.bench.workloads import Materialized, Workload, get_workload, materialize
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.extras import require
from phinetune.progress import console, say

SIDES = ("baseline", "trl-tuned", "phinetune")
BASELINES = ("baseline", "trl-tuned")  # what phinetune's ratios are taken against
LABELS = {"baseline": "TRL with padding", "trl-tuned": "TRL tuned", "phinetune": "phinetune"}


def model_flops(w: Workload, lengths: list[int]) -> float:
    d, kv = w.hidden_size, w.hidden_size * w.num_kv_heads // w.num_heads
    per_layer = d * (d + 2 * kv) + d * d + d * 2 * w.intermediate_size + w.intermediate_size * d
    frozen = w.num_layers * per_layer + d * w.vocab_size
    lora_shapes = {
        "qkv_proj": (d, d + 2 * kv),
        "o_proj": (d, d),
        "gate_up_proj": (d, 2 * w.intermediate_size),
        "down_proj": (w.intermediate_size, d),
    }
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
    load, others = LoadWindow(), OthersShare()
    with console.status(f"bench: training {side}"), open(log_file, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "phinetune.bench.train_child", side, str(spec_file), str(result_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    load.close(), others.close()
    if proc.returncode != 0 or not result_file.exists():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise PhinetuneError(f"bench: the {side} run failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    return {**json.loads(result_file.read_text()), "load": load.to_json(), "others_cores": others.cores}


def load_verdict(a: dict, b: dict, names: tuple[str, str] = ("one side", "the other")) -> str | None:
    """None when a ratio between sides a and b may be judged; else why not (the load changed between them).

    Each side carries `others_cores` (cores other processes kept busy while it ran) and `load` (its LoadWindow
    as JSON). The other processes' share is the test where it was measured; where it was not (no /proc/stat),
    both sides' load averages must have held steady.
    """
    x, y = a.get("others_cores"), b.get("others_cores")
    if x is not None and y is not None:
        if abs(x - y) > MAX_OTHERS_CHANGE:
            return f"not judged: load changed (other processes kept {x:.2f} cores busy during {names[0]}, {y:.2f} during {names[1]})"
        return None
    for side, name in ((a, names[0]), (b, names[1])):
        w = side.get("load") or {}
        if not w.get("steady"):
            start, end = w.get("start") or (0, 0, 0), w.get("end") or (0, 0, 0)
            return f"not judged: load changed (1-minute load average {start[0]:.2f} -> {end[0]:.2f} during {name})"
    return None


def check_trained(side: str, result: dict) -> None:
    proof = result["proof"]
    if proof["lora_tensors"] == 0 or proof["zero_grad_tensors"] or proof["unchanged_tensors"]:
        raise PhinetuneError(
            f"bench: the {side} run did not train: {proof['lora_tensors']} LoRA tensors, "
            f"zero gradients in {proof['zero_grad_tensors'][:3]}, unchanged {proof['unchanged_tensors'][:3]}"
        )


def summarize(results: dict, flops: float, peaks: dict, w: Workload, peak_window: dict | None = None) -> dict:
    """tokens/s, MFU and memory per side; phinetune's ratios against each baseline that ran, and whether they meet
    the workload's targets. `speed`, `memory` and `meets_targets` at the top level are against TRL with padding.
    `peak_window`: the load while the matmul peak was timed (MFU is judged like a ratio between it and phinetune)."""
    peak = max(peaks.values())
    memory_key = "peak_gpu" if w.device == "cuda" else "peak_rss"
    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["mfu"] = flops / r["seconds"] / peak
        r["memory"] = r[memory_key]
    fast = results["phinetune"]
    targets = {
        "baseline": (w.target_speedup, w.target_memory),
        "trl-tuned": (w.target_speedup_tuned, w.target_memory_tuned),
    }
    ratios: dict = {}
    for side in BASELINES:
        if side not in results:
            continue
        base, (speed_target, memory_target) = results[side], targets[side]
        r = {
            "speed": fast["tokens_per_s"] / base["tokens_per_s"],
            "memory": fast["memory"] / base["memory"],
            "target_speed": speed_target,
            "target_memory": memory_target,
            "load": load_verdict(base, fast, (LABELS[side], "phinetune")),
        }
        r["meets_targets"] = r["speed"] >= speed_target and (memory_target is None or r["memory"] <= memory_target)
        ratios[side] = r
    ratios["mfu"] = {
        "value": fast["mfu"],
        "target": w.target_mfu,
        "meets_targets": fast["mfu"] >= w.target_mfu,
        "load": load_verdict(peak_window, fast, ("the matmul peak's timing", "phinetune")) if peak_window else None,
    }
    if "baseline" in ratios:
        ratios.update({k: ratios["baseline"][k] for k in ("speed", "memory", "meets_targets")})
    return ratios


def verdict(r: dict) -> str:
    if r.get("load"):
        return r["load"]
    return "meets" if r["meets_targets"] else "MISSES"


def print_table(
    results: dict, ratios: dict, peaks: dict, w: Workload, memory_name: str, info: dict, run_load: dict
) -> None:
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"
    say(
        f"machine: {where}; matmul peak measured now: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s (MFU uses the higher)"
    )
    say(
        f"{'':14} {'dtype':>6} {'tokens/s':>10} {memory_name:>12} {'MFU':>7} {'first loss':>11} {'final loss':>11} {'steps':>6}"
        f"  load avg start -> end, others' cores"
    )
    for side in SIDES:
        if side not in results:
            continue
        r = results[side]
        load = r.get("load") or {}
        start, end = load.get("start") or (0, 0, 0), load.get("end") or (0, 0, 0)
        others = "n/a" if r.get("others_cores") is None else f"{r['others_cores']:.2f}"
        say(
            f"{LABELS[side]:16} {r['dtype']:>6} {r['tokens_per_s']:10.1f} {r['memory'] / 2**30:8.2f} GiB {100 * r['mfu']:6.1f}% "
            f"{r['losses'][0]:11.4f} {r['losses'][-1]:11.4f} {len(r['losses']):6d}  {start[0]:.2f} -> {end[0]:.2f}, {others}"
        )
    for side in BASELINES:
        if side in ratios:
            r = ratios[side]
            memory = f"<= {r['target_memory']}x" if r["target_memory"] is not None else "no memory target"
            say(
                f"phinetune vs {LABELS[side]}: {r['speed']:.2f}x tokens/s, {r['memory']:.2f}x peak memory "
                f"(targets >= {r['target_speed']}x and {memory}: {verdict(r)})"
            )
    m = ratios["mfu"]
    say(
        f"phinetune MFU: {100 * m['value']:.1f}% of the matmul peak measured in this run (target >= {100 * m['target']:.0f}%: "
        f"{verdict(m)})"
    )
    say(
        f"whole run: {run_load['described']}"
        + (
            ""
            if run_load["others_cores"] is None
            else f"; other processes kept {run_load['others_cores']:.2f} cores busy on average"
        )
    )


def print_parity(results: dict) -> dict:
    a, b = results["baseline"]["losses"], results["phinetune"]["losses"]
    say(
        "parity, TRL with padding vs phinetune (both fp32, no packing, same batches in the same order, LoRA dropout 0):"
    )
    say(f"{'step':>5} {'baseline':>10} {'phinetune':>10} {'diff':>10}")
    diffs = []
    for i, (x, y) in enumerate(zip(a, b), 1):
        diffs.append(abs(x - y))
        say(f"{i:5d} {x:10.4f} {y:10.4f} {y - x:+10.4f}")
    worst = max(diffs) if diffs else float("nan")
    say(f"largest |difference|: {worst:.2e} over {len(diffs)} steps (baseline {len(a)}, phinetune {len(b)} steps)")
    return {"max_abs_diff": worst, "steps": len(diffs), "same_steps": len(a) == len(b)}


def reproduce_command(
    workload: str,
    parity: bool,
    rows: int | None,
    realdata: str | None,
    profile: bool,
    sides: tuple[str, ...] | None,
) -> str:
    parts = ["phinetune bench train", f"--workload {workload}"]
    parts += [f"--realdata {realdata}"] if realdata else []
    parts += [f"--rows {rows}"] if rows else []
    parts += ["--parity"] if parity else []
    parts += ["--profile"] if profile else []
    parts += [f"--sides {','.join(sides)}"] if sides else []
    return " ".join(parts)


def bench_train(
    workload: str = "cpu-reference",
    out: str | None = None,
    parity: bool = False,
    rows: int | None = None,
    realdata: str | None = None,
    work_dir: str | None = None,
    profile: bool = False,
    sides: tuple[str, ...] | None = None,
) -> dict:
    """`sides`: a subset of SIDES to run (phinetune always runs; default all three)."""
    w = get_workload(workload)
    chosen = tuple(s for s in SIDES if s in set(sides or SIDES) | {"phinetune"})
    unknown = set(sides or ()) - set(SIDES)
    if unknown:
        raise ConfigError(f"bench train sides {', '.join(sorted(unknown))} are unknown; choose from {', '.join(SIDES)}")
    require("phinetune bench train", "bench", "trl", "psutil")  # the baselines it compares against are TRL's
    if w.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PhinetuneError(f"bench train --workload {workload} needs a CUDA GPU and none is visible")
    work = Path(work_dir or tempfile.mkdtemp(prefix="phinetune-bench-"))
    whole, whole_others = LoadWindow(), OthersShare()
    with console.status(f"bench: building the {workload} model and data"):
        m = materialize(w, work / "workload", realdata, rows)
    say(f"workload {workload}: {m.note}")
    ids = token_ids(m)
    spec = {
        "workload": asdict(w),
        "model_dir": m.model_dir,
        "data_file": m.data_file,
        "parity": parity,
        "token_ids": parity_order(ids, w) if parity else ids,
        "profile": profile,
    }
    peak_load, peak_others = LoadWindow(), OthersShare()
    peaks = measured_peaks(w.device)
    peak_window = {"load": peak_load.close().to_json(), "others_cores": peak_others.close().cores}
    results = {side: run_side(side, spec, work) for side in chosen}
    for side in chosen:
        check_trained(side, results[side])
    counts = {side: results[side]["tokens"] for side in chosen}
    if len(set(counts.values())) != 1:
        raise PhinetuneError(f"bench: the sides trained different token counts ({counts})")
    run_load = {
        "window": whole.close().to_json(),
        "described": whole.describe(),
        "others_cores": whole_others.close().cores,
    }
    lengths = [len(x) for x in ids]
    ratios = summarize(results, model_flops(w, lengths), peaks, w, peak_window)
    info = machine()
    print_table(results, ratios, peaks, w, "peak GPU" if w.device == "cuda" else "peak RSS", info, run_load)
    report = {
        "workload": m.to_json(),
        "parity": parity,
        "peaks_flops": peaks,
        "results": results,
        "ratios": ratios,
        "tokens": sum(lengths),
        "machine": info,
        "load": run_load,
        "command": reproduce_command(workload, parity, rows, realdata, profile, sides),
    }
    report["workload"].pop("lengths", None)
    if profile:
        from phinetune.bench.step_profile import format_split

        report["profile"] = results["phinetune"].get("profile")
        for line in format_split(report["profile"]):
            say(line)
    if parity and "baseline" in results:
        report["parity_check"] = print_parity(results)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")
    return report
