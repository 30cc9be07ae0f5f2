"""One rank of a real 2-process run fails (SIGKILL from outside, a NaN, an OOM, a hang): the whole job ends within a bound,
with one sentence naming the rank and the cause, and leaves a checkpoint the next launch resumes from.

The job runs as a user runs it, `phinetune train CFG --nproc 2` (torchrun, DDP over gloo), started with its
output going to files and stdin closed: a test must not hold the launcher's pipes, and reading them only at
the end (subprocess.communicate) cannot watch the run while it goes. NaN and OOM are injected in rank 1 at
step 3 through PHINETUNE_INJECT_FAULT (train/faults.py), and so is a hang (rank 1 stops making progress,
alive): rank 0 then gives up after the collective timeout, set short here (PHINETUNE_DIST_TIMEOUT). The
resumed curve is compared with an uninterrupted 1-process run at the same global batch, within the tolerance
of the sharding tests (2e-5; test_sharding.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import SRC, run_cli
from phinetune.config import dump_config
from phinetune.runs.run_dir import RunDir
from test_launch import losses
from test_sharding import assert_same_curve

# Seconds from a rank's failure to the end of the whole job. torchrun notices a dead worker within a second
# and stops the others; a rank still waiting in a collective is ended by gloo seeing its peer's socket close.
# torchrun's reports here stamp the failure and the stop of the other rank 0-7 s apart (not timed more closely:
# the machine is shared); the bound leaves room for a machine shared with other jobs, and is far
# below PHINETUNE_DIST_TIMEOUT (600 s), the bound of last resort for a rank that is alive but stuck.
BOUND_S = 60
COMMON = [
    "train.batch_size=2",
    "adapter.dropout=0",
    "data.packing=false",
    "train.recall_check=false",
    "train.eval_every=1000",
    "train.log_every=1",
    "train.keep_checkpoints=2",
]


class Launch:
    """`phinetune train CFG --nproc 2` in the background, its stdout and stderr going to files."""

    def __init__(self, cfg: Path, logs: Path, **env: str):
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        environ = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "HF_HUB_OFFLINE": "1",
            "PHINETUNE_QUIET": "1",
            "COLUMNS": "200",
            **env,
        }
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "phinetune", "train", str(cfg), "--nproc", "2"],
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # never leave a job behind
            raise AssertionError(f"the job did not end within {timeout:.0f} s:\n{self.output()[-3000:]}") from None

    def rank_pid(self, rank: int) -> int:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "phinetune" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        raise AssertionError(f"no rank {rank} among the launcher's processes")

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def sentence(self) -> str:
        return self.err.read_text().strip().splitlines()[-1]


def logged_step(run: Path) -> int:
    try:
        return max(
            (json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line),
            default=0,
        )
    except (OSError, ValueError):
        return 0  # not written yet, or a line being written


def configs(tiny_cfg, tmp_path: Path, *overrides: str) -> tuple[Path, Path]:
    run = tmp_path / "run"
    cfg = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*COMMON, *overrides, "train.grad_accum=1", f"output.dir={run}"), cfg)
    return run, cfg


@pytest.mark.slow
def test_a_sigkilled_rank_ends_the_job_and_the_next_launch_resumes_on_the_same_curve(tiny_cfg, tmp_path):
    from phinetune.train.recipe import train

    steps = ["train.max_steps=16", "train.save_every=2"]
    expected = losses(train(tiny_cfg(*COMMON, *steps, "train.grad_accum=2", f"output.dir={tmp_path / 'one'}")).run.path)
    run, cfg = configs(tiny_cfg, tmp_path, *steps)
    job = Launch(cfg, tmp_path / "killed")
    while logged_step(run) < 3:  # past the first checkpoint (step 2), mid-run
        assert job.proc.poll() is None, f"the job ended before it could be killed:\n{job.output()[-3000:]}"
        time.sleep(0.05)
    os.kill(job.rank_pid(1), signal.SIGKILL)
    killed = time.monotonic()
    code = job.wait(BOUND_S)
    took = time.monotonic() - killed
    assert code != 0 and took < BOUND_S
    assert job.sentence().startswith(
        "training failed: rank 1 was killed by SIGKILL; the launcher stopped the other ranks."
    ), job.output()[-3000:]
    done = RunDir(run).checkpoint_dirs()
    assert done and 2 <= done[-1][0] < 16, done
    assert logged_step(run) < 16

    run_cli("train", str(cfg), "--nproc", "2")  # the same command: resumes from the last checkpoint, to the end
    assert_same_curve(expected, losses(run))
    assert RunDir(run).read_info().status == "finished"


# PHINETUNE_DIST_TIMEOUT for the hang case only: short, but above any honest wait of this run on a loaded machine
# (rank 1 waits at a barrier while rank 0 builds the tiny base and writes checkpoints).
HANG_TIMEOUT_S = 15
TORCHRUN_GRACE_S = 30  # torchrun's wait between SIGTERM and SIGKILL of the ranks it stops (a hung one ignores SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault,cause,bound",
    [
        ("nan", "training failed: loss became nan at step 3 on rank 1 of 2; nothing after step 2 was saved.", BOUND_S),
        (
            "oom",
            "training failed: rank 1 failed: out of memory at step 3 on rank 1 of 2; settings that use less memory:",
            BOUND_S,
        ),
        (
            "hang",
            f"training failed: rank 0 waited {HANG_TIMEOUT_S} s (PHINETUNE_DIST_TIMEOUT) in a collective for the other ranks (1) "
            "and gave up: one of them is stuck or far slower;",
            HANG_TIMEOUT_S + TORCHRUN_GRACE_S + BOUND_S,
        ),
    ],
)
def test_a_nan_an_oom_or_a_hang_in_one_rank_stops_every_rank_with_one_sentence(tiny_cfg, tmp_path, fault, cause, bound):
    run, cfg = configs(tiny_cfg, tmp_path, "train.max_steps=6", "train.save_every=1")
    timeout = {"PHINETUNE_DIST_TIMEOUT": str(HANG_TIMEOUT_S)} if fault == "hang" else {}
    job = Launch(cfg, tmp_path / fault, PHINETUNE_INJECT_FAULT=f"{fault}:1:3", **timeout)
    while job.proc.poll() is None and logged_step(run) < 2:
        time.sleep(0.05)
    step_2 = time.monotonic()  # the fault comes in the next step
    code = job.wait(bound)
    assert time.monotonic() - step_2 < bound and code != 0, job.output()[-3000:]
    assert job.sentence().startswith(cause), job.output()[-3000:]
    assert "Run the same command again to resume from the latest checkpoint" in job.sentence()
    assert [step for step, _ in RunDir(run).checkpoint_dirs()] == [1, 2]  # step 3 never completed on any rank
    assert logged_step(run) == 2
    assert RunDir(run).read_info().status.startswith("failed at step 3:")
