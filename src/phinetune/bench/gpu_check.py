"""The prepared GPU check behind `scripts/gpu_check.sh`: every benchmark command runs as its own process under
its own time budget, then one report (gpu-check.json + gpu-check.md) combines the JSON each command wrote.

    python -m phinetune.bench.gpu_check run --out DIR --work DIR [--cpu-smoke] [--budget S] [--spent S] [--realdata DIR]
    python -m phinetune.bench.gpu_check report DIR     # rebuild the report of a finished folder
    python -m phinetune.bench.gpu_check env OUT.json   # the environment probe (the first step)

The steps are data (`gpu_steps`, `smoke_steps`): the command line, its budget in seconds and the JSON it
writes. A step that fails or runs past its budget is recorded as failed with the tail of its log, and the
next one still runs; no step gets more than what is left of the whole budget (under 8 minutes on one
H100/H200, the offline install included). `--cpu-smoke` swaps the workloads for tiny ones, so the whole
check runs end to end on a CPU in the test suite, through the same runner and the same report.

Why a runner of our own rather than `timeout` in the shell: a timed-out `bench train` must take the child
process of each side with it, so every step runs in its own process group and the whole group is ended;
and each step's outcome (ok, failed, timed out, skipped, with its log tail) belongs in the same JSON as the
figures. Only the standard library (and phinetune.markdown) is imported at module level: this runs right
after the offline install, which may itself have failed, and must still write its report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from phinetune.markdown import md_table

REPORT_JSON, REPORT_MD = "gpu-check.json", "gpu-check.md"
GPU_BUDGET_S = 470  # under 8 minutes on one H100/H200, with 10 s left for the report
SMOKE_BUDGET_S = 900  # CPU smoke: a loaded shared CPU, not a time claim
TAIL_CHARS = 3000
# phinetune against a TRL side tuned for speed, where the workload does not carry its own targets for it
# (target_speedup_tuned, target_memory_tuned in bench/workloads.py); against TRL with padding the workload always does.
TUNED_TARGETS = {"cuda": {"speed": 1.5}, "cpu": {"speed": 3.0, "memory": 0.5}}
GPU_DECODE_TARGET = 0.6  # batch-1 decode on the GPU, share of the memory-bandwidth limit


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # env | train | infer | plan | nproc: how the report reads its JSON
    budget_s: int
    args: tuple[str, ...]  # after the Python interpreter; "{dir}" is the check folder, "{work}" the models' folder
    out: str  # the JSON file the command writes, relative to the check folder
    needs: str = ""  # a path (relative to the work folder) an earlier step makes
    skip: str = ""  # why it does not run here: one line in the report

    def argv(self, folder: Path, work: Path) -> list[str]:
        return [sys.executable, *(a.replace("{dir}", str(folder)).replace("{work}", str(work)) for a in self.args)]


def _train(
    name: str, workload: str, budget: int, realdata: str | None, *extra: str, kind: str = "train", skip: str = ""
) -> Step:
    args = (
        "-m",
        "phinetune",
        "bench",
        "train",
        "--workload",
        workload,
        "--work-dir",
        f"{{work}}/{name}",
        "--out",
        f"{{dir}}/{name}.json",
        *extra,
    )
    return Step(name, kind, budget, args + (("--realdata", realdata) if realdata else ()), f"{name}.json", skip=skip)


def env_step(budget: int = 30) -> Step:
    return Step("env", "env", budget, ("-m", "phinetune.bench.gpu_check", "env", "{dir}/env.json"), "env.json")


def gpu_steps(gpus: int, realdata: str | None = None) -> list[Step]:
    """One H100/H200: about 7 minutes of budgets after the environment probe (the install runs before)."""
    model = "train-nf4/workload/model"  # the random-weight Phi-3.5-mini `bench train` saved (bf16 safetensors)
    steps = [
        _train("train-nf4", "gpu-reference", 160, realdata),
        Step(
            "infer",
            "infer",
            60,
            (
                "-m",
                "phinetune",
                "bench",
                "infer",
                f"{{work}}/{model}",
                "--dtype",
                "bf16,fp16,nf4",
                "--batch-sizes",
                "1,8",
                "--out",
                "{dir}/infer.json",
            ),
            "infer.json",
            needs=model,
        ),
        Step(
            "plan",
            "plan",
            55,
            ("-m", "phinetune", "plan", "--validate", "--device", "cuda", "--out", "{dir}/plan.json"),
            "plan.json",
        ),
        _train("train-bf16", "gpu-reference-bf16", 140, realdata),
    ]
    # DDP vs FSDP2 (bench train --nproc): bf16 LoRA, since QLoRA under FSDP2 is not proven (docs/scale-and-resume.md).
    skip = "" if gpus >= 2 else f"{gpus} GPU visible: DDP vs FSDP2 needs two or more"
    n = str(max(gpus, 2))
    steps += [
        _train("nproc-ddp", "gpu-reference-bf16", 150, realdata, "--nproc", f"1,{n}", kind="nproc", skip=skip),
        _train(
            "nproc-fsdp2",
            "gpu-reference-bf16",
            150,
            realdata,
            "--nproc",
            n,
            "--accelerate-config",
            "configs/accelerate/fsdp.yaml",
            kind="nproc",
            skip=skip,
        ),
    ]
    return steps


def smoke_steps() -> list[Step]:
    """The same commands on tiny shapes (seconds each on an idle CPU), for the test suite."""
    model = "train-tiny/workload/model"
    return [
        _train("train-tiny", "tiny", 300, None),
        Step(
            "infer",
            "infer",
            180,
            (
                "-m",
                "phinetune",
                "bench",
                "infer",
                f"{{work}}/{model}",
                "--dtype",
                "bf16,fp16,nf4",
                "--prompt-tokens",
                "16",
                "--new-tokens",
                "6",
                "--batch-sizes",
                "1,2",
                "--out",
                "{dir}/infer.json",
            ),
            "infer.json",
            needs=model,
        ),
        Step(
            "plan",
            "plan",
            180,
            ("-m", "phinetune", "plan", "--validate", "--quick", "--out", "{dir}/plan.json"),
            "plan.json",
        ),
        Step("nproc", "nproc", 0, (), "", skip="CPU smoke: no GPU; DDP vs FSDP2 runs on a machine with two or more"),
    ]


# ---------------------------------------------------------------- running


def run_step(step: Step, folder: Path, work: Path, timeout_s: float) -> dict:
    """Run one step in its own process group; return its record (status ok|failed|timeout|skipped)."""
    log = folder / "logs" / f"{step.name}.log"
    record = {
        "name": step.name,
        "kind": step.kind,
        "budget_s": step.budget_s,
        "timeout_s": round(max(timeout_s, 0)),
        "command": _shown(step.argv(folder, work)[1:], folder, work) if step.args else "",
        "log": str(log.relative_to(folder)),
        "json": step.out,
        "seconds": 0.0,
        "rc": None,
        "note": "",
    }
    if step.skip:
        return {**record, "status": "skipped", "note": step.skip, "log": ""}
    if timeout_s < 5:
        return {**record, "status": "skipped", "note": "no time left in the whole check's budget", "log": ""}
    log.parent.mkdir(parents=True, exist_ok=True)
    if step.needs and not (work / step.needs).exists():
        note = f"needs {step.needs}, which an earlier step did not make"
        log.write_text(note + "\n")
        return {**record, "status": "failed", "note": note, "tail": note}
    (folder / step.out).unlink(missing_ok=True)  # a JSON left by an earlier check must not pass for this one's
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    start = time.monotonic()
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            step.argv(folder, work), stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 and (folder / step.out).is_file() else "failed"
            note = "" if status == "ok" else (f"exit {rc}" if rc else f"exit 0 but {step.out} was not written")
        except subprocess.TimeoutExpired:
            rc, status, note = _end_group(proc), "timeout", f"ran past its {timeout_s:.0f} s budget and was stopped"
    record.update(status=status, rc=rc, seconds=round(time.monotonic() - start, 1), note=note)
    if status != "ok":
        record["tail"] = log.read_text(errors="replace")[-TAIL_CHARS:]
    return record


def _shown(argv: list[str], folder: Path, work: Path) -> str:
    """The command as a user would retype it: `phinetune ...`, the two folders as $OUT and $WORK."""
    text = shlex.join(["phinetune", *argv[2:]] if argv[:2] == ["-m", "phinetune"] else ["python", *argv])
    return text.replace(str(folder), "$OUT").replace(str(work), "$WORK")


def _end_group(proc: subprocess.Popen) -> int | None:
    """SIGTERM the step's process group (the step and its children), then SIGKILL what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def run_check(
    folder: Path,
    work: Path,
    smoke: bool,
    budget_s: float | None = None,
    spent_s: float = 0.0,
    realdata: str | None = None,
) -> int:
    """Run every step within the budget, write the report; 0 when every step that ran passed, 1 otherwise,
    2 when a GPU check finds no CUDA GPU."""
    folder.mkdir(parents=True, exist_ok=True)
    budget = budget_s if budget_s is not None else (SMOKE_BUDGET_S if smoke else GPU_BUDGET_S)
    deadline = time.monotonic() + budget - spent_s
    records = [run_step(env_step(), folder, work, deadline - time.monotonic())]
    env = _read(folder / "env.json") or {}
    gpus = int(env.get("cuda_devices") or 0)
    if not smoke and gpus == 0:
        records[0]["note"] = records[0]["note"] or "no CUDA GPU visible"
        write_report(folder, records, smoke, budget, spent_s)
        print(
            f"gpu_check: no CUDA GPU is visible (see {folder / 'logs' / 'env.log'}); on a machine without one, "
            "run scripts/gpu_check.sh --cpu-smoke",
            file=sys.stderr,
        )
        return 2
    for step in smoke_steps() if smoke else gpu_steps(gpus, realdata):
        print(f"gpu_check: {step.name} ...", flush=True)
        records.append(run_step(step, folder, work, min(step.budget_s, deadline - time.monotonic())))
        r = records[-1]
        print(
            f"gpu_check: {step.name} {r['status']} ({r['seconds']:.0f} s){': ' + r['note'] if r['note'] else ''}",
            flush=True,
        )
    report = write_report(folder, records, smoke, budget, spent_s)
    print(f"gpu_check: wrote {folder / REPORT_JSON} and {folder / REPORT_MD}")
    return 0 if report["passed"] else 1


# ---------------------------------------------------------------- the report


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_section(step: str, data: dict) -> dict:
    """Every side of one `bench train` JSON, and phinetune against each other side (tokens/s and peak memory)."""
    w = data["workload"]["workload"]
    device = w.get("device", "cpu")
    sides = {}
    for side, r in data["results"].items():
        memory = r.get("memory", r.get("peak_gpu" if device == "cuda" else "peak_rss"))
        tps = r.get("tokens_per_s", r["tokens"] / r["seconds"])
        sides[side] = {
            "dtype": r.get("dtype"),
            "tokens_per_s": tps,
            "memory_bytes": memory,
            "mfu": r.get("mfu"),
            "first_loss": (r.get("losses") or [None])[0],
            "final_loss": (r.get("losses") or [None])[-1],
            "steps": len(r.get("losses") or []),
        }
    fast = sides.get("phinetune")
    versus = {}
    for side, s in sides.items():
        if side == "phinetune" or not fast:
            continue
        speed, memory = fast["tokens_per_s"] / s["tokens_per_s"], fast["memory_bytes"] / s["memory_bytes"]
        targets = _targets(side, device, w)
        met = (speed >= targets["speed"] if "speed" in targets else True) and (
            memory <= targets["memory"] if "memory" in targets else True
        )
        # bench train's own word when the load moved between sides: then the ratio is not judged here either
        load = ((data.get("ratios") or {}).get(side) or {}).get("load")
        versus[side] = {
            "speed": speed,
            "memory": memory,
            "targets": targets,
            "met": met if targets and not load else None,
            "load": load,
        }
    return {
        "step": step,
        "workload": w["name"],
        "device": device,
        "note": data["workload"].get("note", ""),
        "tokens": data.get("tokens"),
        "peaks_flops": data.get("peaks_flops"),
        "machine": data.get("machine"),
        "load": data.get("load"),
        "sides": sides,
        "versus": versus,
    }


def _targets(side: str, device: str, w: dict) -> dict:
    """The workload's own targets against that side (TUNED_TARGETS for a tuned TRL side when the workload has none);
    none for the tiny workload, whose targets are placeholders (0x, 99x) for tests."""
    if w.get("name") == "tiny":
        return {}
    if side == "baseline":
        speed, memory = w.get("target_speedup"), w.get("target_memory")
    elif "tuned" in side and "target_speedup_tuned" in w:
        speed, memory = w["target_speedup_tuned"], w.get("target_memory_tuned")
    elif "tuned" in side:
        return dict(TUNED_TARGETS[device])
    else:
        return {}
    return {k: v for k, v in (("speed", speed), ("memory", memory)) if v is not None}


def infer_section(step: str, data: dict) -> dict:
    device = "cuda" if data.get("machine", {}).get("gpu") else "cpu"
    rows = []
    for r in data["results"]:
        for b in r["batches"]:
            rows.append(
                {
                    "dtype": r["dtype"],
                    "compute": r.get("compute_dtype"),
                    "weight_mb": r.get("weight_mb"),
                    "batch": b["batch"],
                    "peak_mb": b.get("peak_mb"),
                    "ttft_s": b.get("ttft_s"),
                    "prefill_tokens_per_s": b.get("prefill_tokens_per_s"),
                    "decode_tokens_per_s": b.get("decode_tokens_per_s"),
                    "bandwidth_gbs": b.get("bandwidth_gbs"),
                    "bandwidth_ratio": b.get("bandwidth_ratio"),
                }
            )
    target = GPU_DECODE_TARGET if device == "cuda" else None  # the CPU target is for bench infer's own CPU workload
    met = {
        r["dtype"]: r["bandwidth_ratio"] >= target
        for r in rows
        if target is not None and r["batch"] == 1 and r["bandwidth_ratio"] is not None
    }
    return {
        "step": step,
        "model": data.get("model"),
        "device": device,
        "bandwidth": data.get("bandwidth"),
        "skipped": data.get("skipped", {}),
        "rows": rows,
        "decode_target": target,
        "decode_met": met,
    }


def plan_section(step: str, data: dict) -> dict:
    return {
        "step": step,
        "machine": data.get("machine"),
        "rows": data["measurements"],
        "worst_error": max((abs(m["error"]) for m in data["measurements"]), default=None),
    }


SECTIONS = {"train": train_section, "nproc": train_section, "infer": infer_section, "plan": plan_section}


def collect(folder: Path, records: list[dict], smoke: bool, budget_s: float, spent_s: float) -> dict:
    report = {
        "mode": "cpu-smoke" if smoke else "gpu",
        "budget_s": budget_s,
        "install_s": spent_s,
        "total_s": round(spent_s + sum(r["seconds"] for r in records), 1),
        "env": _read(folder / "env.json"),
        "steps": records,
        "train": [],
        "nproc": [],
        "infer": [],
        "plan": [],
    }
    for r in records:
        data = _read(folder / r["json"]) if r["status"] == "ok" and r["json"] else None
        if data is not None and r["kind"] in SECTIONS:
            try:
                report[r["kind"]].append(SECTIONS[r["kind"]](r["name"], data))
            except (
                KeyError,
                TypeError,
                ZeroDivisionError,
            ) as exc:  # a command's JSON changed shape: say so, keep the rest
                r.update(status="failed", note=f"{r['json']} could not be read: {type(exc).__name__} {exc}")
    report["passed"] = all(r["status"] in ("ok", "skipped") for r in records)
    return report


def write_report(folder: Path, records: list[dict], smoke: bool, budget_s: float, spent_s: float = 0.0) -> dict:
    report = collect(folder, records, smoke, budget_s, spent_s)
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2))
    (folder / REPORT_MD).write_text(markdown(report))
    return report


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def markdown(report: dict) -> str:
    env = report.get("env") or {}
    where = ", ".join(env.get("gpus") or []) or "no GPU"
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"Machine: {where}; torch {env.get('torch', '?')}, CUDA {env.get('cuda_version') or '-'}, "
        f"{env.get('cpu_count', '?')} CPU cores; load average at start {env.get('load_average', '?')}.",
        f"Time: {report['total_s']:.0f} s of a {report['budget_s']:.0f} s budget (install {report['install_s']:.0f} s). "
        f"Result: {'every step that ran passed' if report['passed'] else 'SOME STEPS FAILED (tails below)'}.",
        "",
        "## Steps",
        "",
        md_table(
            ["step", "status", "seconds", "budget s", "note", "command"],
            [
                [
                    r["name"],
                    r["status"],
                    _f(r["seconds"], ".0f"),
                    r["budget_s"],
                    r["note"],
                    f"`{r['command']}`" if r["command"] else "",
                ]
                for r in report["steps"]
            ],
        ),
    ]
    for t in report["train"] + report["nproc"]:
        mem = "peak GPU GiB" if t["device"] == "cuda" else "peak RSS GiB"
        lines += [
            "",
            f"## bench train: {t['workload']} ({t['step']})",
            "",
            t["note"],
            "",
            md_table(
                ["side", "dtype", "tokens/s", mem, "MFU", "first loss", "final loss", "steps"],
                [
                    [
                        side,
                        s["dtype"],
                        _f(s["tokens_per_s"], ".1f"),
                        _f(s["memory_bytes"], ".2f", 2**-30),
                        _f(s["mfu"], ".1%"),
                        _f(s["first_loss"], ".4f"),
                        _f(s["final_loss"], ".4f"),
                        s["steps"],
                    ]
                    for side, s in t["sides"].items()
                ],
            ),
            "",
            md_table(
                ["phinetune vs", "tokens/s", "peak memory", "targets", "met", "load"],
                [
                    [
                        side,
                        _f(v["speed"], ".2f") + "x",
                        _f(v["memory"], ".2f") + "x",
                        ", ".join(f"{k} {'>=' if k == 'speed' else '<='} {x}x" for k, x in v["targets"].items()) or "-",
                        "-" if v["met"] is None else ("yes" if v["met"] else "NO"),
                        v.get("load") or "-",
                    ]
                    for side, v in t["versus"].items()
                ],
            ),
        ]
    for i in report["infer"]:
        bw = i.get("bandwidth") or {}
        lines += [
            "",
            f"## bench infer ({i['step']})",
            "",
            f"Bandwidth limit: datasheet {bw.get('datasheet_gbs') or '-'} GB/s, measured copy {bw.get('measured_copy_gbs') or '-'} GB/s. "
            + (
                f"Batch-1 decode target: >= {i['decode_target']:.0%} of the limit: "
                f"{', '.join(f'{d} ' + ('met' if ok else 'NOT met') for d, ok in i['decode_met'].items()) or '- (no limit known)'}."
                if i["decode_target"] is not None
                else "No decode target on CPU here."
            )
            + (f" Skipped dtypes: {i['skipped']}." if i["skipped"] else ""),
            "",
            md_table(
                [
                    "dtype",
                    "compute",
                    "weights MB",
                    "batch",
                    "peak MB",
                    "TTFT ms",
                    "prefill tok/s",
                    "decode tok/s",
                    "GB/s read",
                    "% of BW limit",
                ],
                [
                    [
                        r["dtype"],
                        r["compute"],
                        _f(r["weight_mb"], ".1f"),
                        r["batch"],
                        _f(r["peak_mb"], ".1f"),
                        _f(r["ttft_s"], ".1f", 1000),
                        _f(r["prefill_tokens_per_s"], ".0f"),
                        _f(r["decode_tokens_per_s"], ".1f"),
                        _f(r["bandwidth_gbs"], ".2f"),
                        _f(r["bandwidth_ratio"], ".0%"),
                    ]
                    for r in i["rows"]
                ],
            ),
        ]
    for p in report["plan"]:
        lines += [
            "",
            f"## plan --validate ({p['step']})",
            "",
            md_table(
                ["model", "method", "seq x batch", "checkpointing", "device", "estimate MiB", "measured MiB", "error"],
                [
                    [
                        m["name"],
                        m["method"],
                        f"{m['seq']} x {m['batch']}",
                        "on" if m["checkpointing"] else "off",
                        m["device"],
                        _f(m["estimate_bytes"], ".1f", 2**-20),
                        _f(m["measured_bytes"], ".1f", 2**-20),
                        _f(m["error"], "+.1%"),
                    ]
                    for m in p["rows"]
                ],
            ),
        ]
    for r in report["steps"]:
        if r.get("tail"):
            lines += [
                "",
                f"## {r['name']}: {r['status']} (last lines of {r['log']})",
                "",
                "~~~",
                r["tail"].replace("~~~", "~ ~ ~").rstrip(),
                "~~~",
            ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the environment probe


def probe_env(out: Path) -> dict:
    """What the check ran on: GPUs, CUDA, library versions, load (imports torch: it runs as its own step)."""
    from importlib import metadata

    import torch

    versions = {}
    for name in ("transformers", "peft", "accelerate", "trl", "bitsandbytes", "datasets", "pydantic", "phinetune"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    env = {
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": versions,
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(env, indent=2))
    print(json.dumps(env, indent=2))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phinetune.bench.gpu_check", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="run every step and write the report")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--work", type=Path, required=True, help="where the models go (GBs on a GPU): not inside --out")
    run.add_argument("--cpu-smoke", action="store_true")
    run.add_argument("--budget", type=float, default=None, help="seconds for the whole check")
    run.add_argument("--spent", type=float, default=0.0, help="seconds already spent (the install)")
    run.add_argument("--realdata", default=None)
    report = sub.add_parser("report", help="rebuild the report of a finished check folder")
    report.add_argument("folder", type=Path)
    env = sub.add_parser("env", help="probe the environment into a JSON file")
    env.add_argument("out", type=Path)
    a = parser.parse_args(argv)
    if a.verb == "env":
        probe_env(a.out)
        return 0
    if a.verb == "report":
        previous = _read(a.folder / REPORT_JSON)
        if previous is None:
            print(
                f"error: {a.folder / REPORT_JSON} is missing or not JSON; run scripts/gpu_check.sh first",
                file=sys.stderr,
            )
            return 2
        write_report(
            a.folder, previous["steps"], previous["mode"] == "cpu-smoke", previous["budget_s"], previous["install_s"]
        )
        return 0
    if a.out.exists() and not a.out.is_dir():
        print(f"error: --out {a.out} is a file; give a folder for the check's logs and report", file=sys.stderr)
        return 2
    return run_check(a.out, a.work, a.cpu_smoke, a.budget, a.spent, a.realdata)


if __name__ == "__main__":
    sys.exit(main())
