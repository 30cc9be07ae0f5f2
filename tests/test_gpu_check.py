"""scripts/gpu_check.sh and bench/gpu_check.py: the CPU smoke run end to end (the real commands on tiny shapes),
the step runner (failures, timeouts, budgets, missing inputs), the report's ratios, and the offline installer
on a fake wheel folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, SRC
from phinetune.bench import gpu_check
from phinetune.bench.gpu_check import Step

SCRIPT, DOWNLOAD = ROOT / "scripts" / "gpu_check.sh", ROOT / "scripts" / "download_gpu_wheels.sh"


def script(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=full, timeout=timeout)


# ---------------------------------------------------------------- the smoke run, end to end


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_the_report_matches_the_commands_json(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = script(str(SCRIPT), "--cpu-smoke", "--out", str(out), "--work", str(work))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert status == {"env": "ok", "train-tiny": "ok", "infer": "ok", "plan": "ok", "nproc": "skipped"}
    assert report["mode"] == "cpu-smoke" and report["passed"] and report["env"]["cuda_devices"] == 0

    # bench train: every side of the command's own JSON, ratios recomputed here from its raw tokens/seconds/peaks
    raw = json.loads((out / "train-tiny.json").read_text())["results"]
    (train,) = report["train"]
    assert set(train["sides"]) == set(raw) and "phinetune" in raw
    tps = {side: r["tokens"] / r["seconds"] for side, r in raw.items()}
    assert train["versus"]["baseline"]["speed"] == pytest.approx(tps["phinetune"] / tps["baseline"])
    assert train["versus"]["baseline"]["memory"] == pytest.approx(
        raw["phinetune"]["peak_rss"] / raw["baseline"]["peak_rss"]
    )

    # bench infer: one row per dtype and batch size the command measured
    infer_raw = json.loads((out / "infer.json").read_text())
    (infer,) = report["infer"]
    assert len(infer["rows"]) == sum(len(r["batches"]) for r in infer_raw["results"]) > 0
    assert {r["batch"] for r in infer["rows"]} == {1, 2}

    # plan --validate --quick: the tiny cases, the error as (estimate - measured) / measured
    (plan,) = report["plan"]
    assert {m["name"] for m in plan["rows"]} == {"tiny-phi3"}
    for m in plan["rows"]:
        assert m["error"] == pytest.approx((m["estimate_bytes"] - m["measured_bytes"]) / m["measured_bytes"])

    md = (out / "gpu-check.md").read_text()
    assert f"{train['sides']['phinetune']['tokens_per_s']:.1f}" in md and "plan --validate" in md
    assert "CPU smoke: no GPU" in md  # the skipped step says why
    assert (work / "train-tiny" / "workload" / "model" / "config.json").is_file()
    assert not list(out.rglob("*.safetensors")), "the models go to --work, never into the report folder"


# ---------------------------------------------------------------- the step runner


def python_step(name: str, code: str, budget: int = 60, out: str = "", kind: str = "train", **kw) -> Step:
    return Step(name, kind, budget, ("-c", code), out or f"{name}.json", **kw)


def fake_env(gpus: int) -> Step:
    """The environment probe as a machine with `gpus` CUDA devices would answer it."""
    code = "import json; open('{dir}/env.json', 'w').write(json.dumps({'cuda_devices': %d, 'gpus': []}))" % gpus  # noqa: UP031 ({dir} is filled later)
    return python_step("env", code, out="env.json", kind="env")


def test_a_failing_step_keeps_its_log_tail_and_the_next_step_still_runs(tmp_path, monkeypatch):
    writes = "import json; open('{dir}/good.json', 'w').write(json.dumps({'ok': 1}))"
    steps = [
        python_step("bad", "print('boom: the reason'); raise SystemExit(3)"),
        python_step("silent", "print('exit 0, no json')"),
        python_step("good", writes, kind="env"),
    ]
    monkeypatch.setattr(gpu_check, "env_step", lambda: fake_env(0))
    monkeypatch.setattr(gpu_check, "smoke_steps", lambda: steps)
    rc = gpu_check.run_check(tmp_path / "out", tmp_path / "work", smoke=True, budget_s=300)
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    by = {s["name"]: s for s in report["steps"]}
    assert rc == 1 and not report["passed"]
    assert by["bad"]["status"] == "failed" and by["bad"]["rc"] == 3 and "boom: the reason" in by["bad"]["tail"]
    assert by["silent"]["status"] == "failed" and "was not written" in by["silent"]["note"]
    assert by["good"]["status"] == "ok"
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "boom: the reason" in md and "SOME STEPS FAILED" in md


def test_no_step_gets_more_than_what_is_left_of_the_whole_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpu_check, "smoke_steps", lambda: [python_step("a", "raise SystemExit('must not run')", budget=60)]
    )
    # the install already spent 97 of the 100 s: no step has the 5 s a start needs
    assert gpu_check.run_check(tmp_path / "out", tmp_path / "work", smoke=True, budget_s=100, spent_s=97) == 0
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [(s["name"], s["status"], s["note"]) for s in report["steps"]] == [
        ("env", "skipped", "no time left in the whole check's budget"),
        ("a", "skipped", "no time left in the whole check's budget"),
    ]
    assert report["install_s"] == 97 and report["budget_s"] == 100


def test_a_step_past_its_budget_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)"
    )
    start = time.monotonic()
    record = gpu_check.run_step(
        python_step("slow", code), tmp_path, tmp_path, timeout_s=6
    )  # room for a slow start under load (the script prints within 1 s)
    assert record["status"] == "timeout" and "budget" in record["note"] and time.monotonic() - start < 45
    assert "started" in record["tail"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous: wait until the process is gone (or only a zombie)
        if not Path(f"/proc/{grandchild}").exists() or "State:\tZ" in Path(f"/proc/{grandchild}/status").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {grandchild} is still running")


def test_a_json_left_by_an_earlier_check_does_not_pass_for_this_one(tmp_path):
    (tmp_path / "stale.json").write_text("{}")
    record = gpu_check.run_step(python_step("stale", "pass"), tmp_path, tmp_path, timeout_s=30)
    assert record["status"] == "failed" and "was not written" in record["note"]


def test_a_step_whose_input_is_missing_fails_without_running(tmp_path):
    step = python_step("infer", "raise SystemExit('must not run')", needs="train/model")
    record = gpu_check.run_step(step, tmp_path / "out", tmp_path / "work", timeout_s=30)
    assert record["status"] == "failed" and record["note"] == "needs train/model, which an earlier step did not make"


def test_no_gpu_in_gpu_mode_stops_with_exit_2_and_still_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "env_step", lambda: fake_env(0))
    assert gpu_check.run_check(tmp_path / "out", tmp_path / "work", smoke=False) == 2
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["env"] and report["mode"] == "gpu"


def test_gpu_steps_fit_the_budget_and_skip_ddp_fsdp_on_one_gpu():
    one, two = gpu_check.gpu_steps(1), gpu_check.gpu_steps(2)
    ran = [s for s in one if not s.skip]
    assert sum(s.budget_s for s in ran) + gpu_check.env_step().budget_s <= gpu_check.GPU_BUDGET_S < 8 * 60
    assert {s.name for s in one if s.skip} == {"nproc-ddp", "nproc-fsdp2"}
    assert all("needs two or more" in s.skip for s in one if s.skip) and not any(s.skip for s in two)
    train = {s.name: s.args[s.args.index("--workload") + 1] for s in one if "train" in s.args}
    assert train["train-nf4"] == "gpu-reference" and train["train-bf16"] == "gpu-reference-bf16"
    from phinetune.bench.workloads import WORKLOADS

    assert all(w in WORKLOADS for w in train.values())
    assert WORKLOADS["gpu-reference"].quant == "nf4" and WORKLOADS["gpu-reference-bf16"].quant == "none"


# ---------------------------------------------------------------- the report's figures


def bench_train_json(device: str, sides: dict) -> dict:
    return {
        "workload": {
            "workload": {"name": "gpu-reference", "device": device, "target_speedup": 2.5, "target_memory": 0.3},
            "note": "synthetic",
        },
        "results": {
            side: {
                "tokens": tokens,
                "seconds": seconds,
                "peak_gpu": memory,
                "peak_rss": memory,
                "dtype": "bf16",
                "losses": [2.0, 1.5],
            }
            for side, (tokens, seconds, memory) in sides.items()
        },
    }


def test_three_sides_each_ratio_against_its_own_targets():
    # phinetune 3000 tok/s at 2 GiB; TRL with padding 1000 tok/s at 8 GiB; a tuned TRL 2500 tok/s at 6 GiB
    data = bench_train_json(
        "cuda",
        {"baseline": (1000, 1.0, 8 * 2**30), "trl_tuned": (5000, 2.0, 6 * 2**30), "phinetune": (3000, 1.0, 2 * 2**30)},
    )
    t = gpu_check.train_section("train-nf4", data)
    assert t["versus"]["baseline"]["speed"] == pytest.approx(3.0) and t["versus"]["baseline"][
        "memory"
    ] == pytest.approx(0.25)
    assert t["versus"]["baseline"]["met"] is True  # >= 2.5x and <= 0.3x
    assert (
        t["versus"]["trl_tuned"]["speed"] == pytest.approx(1.2) and t["versus"]["trl_tuned"]["met"] is False
    )  # < 1.5x
    md = gpu_check.markdown({**gpu_check.collect(Path("/nonexistent"), [], False, 470, 0), "train": [t]})
    assert "| trl_tuned | 1.20x | 0.33x | speed >= 1.5x | NO | - |" in md
    assert "| baseline | 3.00x | 0.25x | speed >= 2.5x, memory <= 0.3x | yes | - |" in md


def test_a_workload_carrying_its_own_tuned_targets_is_judged_by_them_unless_the_load_moved():
    data = bench_train_json(
        "cuda", {"baseline": (1000, 1.0, 8), "trl-tuned": (2000, 1.0, 4), "phinetune": (3000, 1.0, 2)}
    )
    data["workload"]["workload"].update(target_speedup_tuned=1.4, target_memory_tuned=None)
    data["ratios"] = {"trl-tuned": {"load": "not judged: the load changed"}}
    v = gpu_check.train_section("train-nf4", data)["versus"]["trl-tuned"]
    assert v["targets"] == {"speed": 1.4} and v["speed"] == pytest.approx(1.5)
    assert (
        v["met"] is None and v["load"] == "not judged: the load changed"
    )  # 1.5x >= 1.4x, but not judged under a moving load
    del data["ratios"]
    assert gpu_check.train_section("train-nf4", data)["versus"]["trl-tuned"]["met"] is True


def test_decode_target_is_judged_per_dtype_at_batch_1():
    def dtype(name, ratios):
        return {
            "dtype": name,
            "compute_dtype": "bfloat16",
            "weight_mb": 7000.0,
            "batches": [
                {
                    "batch": b,
                    "ttft_s": 0.02,
                    "decode_tokens_per_s": 100.0,
                    "peak_mb": 8000.0,
                    "bandwidth_gbs": 4800 * r,
                    "bandwidth_ratio": r,
                }
                for b, r in ratios
            ],
        }

    data = {
        "model": "m",
        "machine": {"gpu": "NVIDIA H200"},
        "bandwidth": {"datasheet_gbs": 4800},
        "results": [dtype("bf16", [(1, 0.65), (8, 0.2)]), dtype("nf4", [(1, 0.3), (8, 0.9)])],
    }
    i = gpu_check.infer_section("infer", data)
    assert i["decode_met"] == {"bf16": True, "nf4": False} and len(i["rows"]) == 4  # batch 8 does not count


def test_a_json_of_an_unknown_shape_fails_its_step_and_keeps_the_others(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"unexpected": True}))
    (tmp_path / "b.json").write_text(json.dumps({"measurements": []}))
    records = [
        {"name": "a", "kind": "train", "status": "ok", "json": "a.json", "seconds": 1.0, "note": ""},
        {"name": "b", "kind": "plan", "status": "ok", "json": "b.json", "seconds": 1.0, "note": ""},
    ]
    report = gpu_check.collect(tmp_path, records, True, 100, 0)
    assert records[0]["status"] == "failed" and "could not be read" in records[0]["note"]
    assert report["plan"] and not report["passed"]


# ---------------------------------------------------------------- the offline installer


def fake_wheel(folder: Path, dist: str, version: str, module: str) -> Path:
    info = f"{dist}-{version}.dist-info"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.slow
def test_install_only_puts_missing_wheels_and_phinetune_into_the_site_folder(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    fake_wheel(wheels, "s20d_fake_dep", "1.0", "s20d_fake_dep")
    fake_wheel(wheels, "typer", "0.0.1", "typer_would_be_replaced")  # installed here already: must be left alone
    proc = script(str(SCRIPT), "--install-only", "--wheels", str(wheels), "--site", str(site), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "installing 1 wheel(s)" in proc.stdout and "every requirement of phinetune[bench] is installed" in proc.stdout
    )
    assert (site / "s20d_fake_dep.py").is_file() and not (site / "typer_would_be_replaced.py").exists()
    assert list(site.glob("phinetune-*.dist-info")) and (site / "phinetune" / "bench" / "gpu_check.py").is_file()


@pytest.mark.slow
def test_an_unmet_requirement_is_named_and_the_install_fails(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    old = (
        site / "pydantic-1.0.0.dist-info"
    )  # the site folder comes first on the path: pydantic 1.0 shadows the real one
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: pydantic\nVersion: 1.0.0\n")
    proc = script(str(SCRIPT), "--install-only", "--wheels", str(wheels), "--site", str(site), timeout=300)
    assert proc.returncode == 2
    # the requirement as phinetune's installed metadata states it (with its upper bound: pydantic<3,>=2.6)
    assert re.search(
        r"phinetune\[bench\] needs pydantic[<>=,.\d]*>=2\.6[<>=,.\d]*: 1\.0\.0 is installed", proc.stderr
    ), proc.stderr
    assert "download_gpu_wheels.sh" in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr


def test_bad_input_is_one_sentence_and_exit_2(tmp_path):
    proc = script(str(SCRIPT), "--wheels", str(tmp_path / "absent"), "--install-only")
    assert proc.returncode == 2 and proc.stderr.startswith("error: wheel folder") and len(proc.stderr.splitlines()) == 1
    proc = script(str(SCRIPT), "--budget", "8min", "--cpu-smoke")
    assert proc.returncode == 2 and "--budget must be whole seconds" in proc.stderr
    proc = script(str(SCRIPT), "--frobnicate")
    assert proc.returncode == 2 and "unknown option '--frobnicate'" in proc.stderr
    proc = script(str(DOWNLOAD), "--python", "3.9", "--dest", str(tmp_path / "w"))
    assert proc.returncode == 2 and "--python must be 3.10, 3.11 or 3.12" in proc.stderr
    proc = script(str(DOWNLOAD), "--have", str(tmp_path / "nope.txt"), "--dest", str(tmp_path / "w"))
    assert proc.returncode == 2 and "is not a file" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(SCRIPT), str(DOWNLOAD)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
