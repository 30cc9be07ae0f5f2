"""Kill training at random points, resume it, and check the loss curve matches an uninterrupted run.

    python scripts/kill_resume_trials.py --trials 20 --seed 1 [--json report.json] [--workdir DIR] [--objective dpo|grpo]

Each run is a real process: forked from this one after the imports (so a trial costs seconds, not an
interpreter start), it runs the actual `phinetune train` command-line entry point, and is stopped from
outside with SIGKILL (kill -9) or SIGTERM. Trial kinds:
  kill       SIGKILL once the run has logged a random step, plus a random delay (lands in steps and saves)
  save-kill  SIGKILL from inside a checkpoint save, after its files are written but before the rename
  sigterm    SIGTERM at a random point: the run must save a checkpoint and exit with code 143
After each stop the same command runs again (auto-resume) to the end, and its metrics.jsonl must equal the
uninterrupted run's, step for step. Exit code 0 only when every trial matches. Each trial also records how a reader
sees the run (runs/status.py): "running" just before the stop, "interrupted" after it (run.json of a killed run still
says running; the lock on the run folder tells).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.update(HF_HUB_OFFLINE="1", PHINETUNE_QUIET="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")

import phinetune.cli  # noqa: E402  (imported before forking: children start warm)
import phinetune.train.recipe  # noqa: E402,F401

MAX_STEPS = 8
ARGS = [
    "model.name=tiny-phi3",
    "data.train=builtin:riddles",
    "data.eval_size=4",
    "data.limit=24",
    f"train.max_steps={MAX_STEPS}",
    "train.batch_size=2",
    "train.grad_accum=2",
    "train.eval_every=3",
    "train.log_every=1",
    "train.learning_rate=3e-3",
    "train.save_every=1",
    "train.keep_checkpoints=2",
    "adapter.modules_to_save=[embed_tokens,lm_head]",
]
# --objective: the same run trained with a preference loss or GRPO (sampling is seeded per step, so it replays).
OBJECTIVE_ARGS = {
    "sft": [],
    "dpo": ["train.objective=dpo", "data.train=builtin:riddles_preferences"],
    "grpo": [
        "train.objective=grpo",
        "data.train=builtin:riddles_qa",
        "grpo.group_size=2",
        "grpo.max_completion_length=4",
        "data.eval_size=2",
    ],
}


def spawn(out: Path, kill_in_save_at: int = 0) -> int:
    """Fork a child that runs `phinetune train ARGS output.dir=OUT` through the CLI entry point."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        sys.stdout = sys.stderr = open(out.parent / f"{out.name}.log", "a")
        if kill_in_save_at:
            _kill_inside_save(kill_in_save_at)
        sys.argv = ["phinetune", "train", *ARGS, f"output.dir={out}"]
        try:
            phinetune.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def _kill_inside_save(step: int) -> None:
    """SIGKILL this process inside the save of `step`: files written and fsynced, rename not done."""
    from phinetune.train import checkpoint

    real = checkpoint._fsync_tree

    def fsync_then_die(root: Path) -> None:
        real(root)
        if root.name.endswith(f"-{step}"):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint._fsync_tree = fsync_then_die


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def losses(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The loss (or eval loss / eval reward) and the objective's own curves: margins, rewards.
    extra = ("margin", "rewards_chosen", "reward_mean", "zero_std_groups")
    return [
        (r["step"], "loss" in r, r.get("loss", r.get("eval_loss", r.get("eval_reward"))), *(r.get(k) for k in extra))
        for r in rows
    ]


def logged_step(run: Path) -> int:
    try:
        return max(
            (json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()), default=-1
        )
    except (OSError, ValueError):
        return -1


def stop_at_random(run: Path, pid: int, rng: random.Random, sig: int) -> dict:
    target = rng.randint(1, MAX_STEPS - 2)  # after step 1 is logged: most kills then resume mid-run
    while logged_step(run) < target:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return {"target_step": target, "exit": "finished early"}
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.25))
    live = state(run)  # what a reader sees of the run while it trains
    os.kill(pid, sig)
    return {"target_step": target, "logged_before_stop": logged_step(run), "exit": wait(pid), "state_before_stop": live}


def state(run: Path) -> str:
    """runs/status.py's reading of the run: running while its process holds it, interrupted once that is gone."""
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import run_status

    return run_status(RunDir(run)).state


def latest(run: Path):
    from phinetune.runs.run_dir import RunDir
    from phinetune.train.checkpoint import latest_checkpoint

    path = latest_checkpoint(RunDir(run))
    return path.name if path else None


def trial(kind: str, run: Path, rng: random.Random) -> dict:
    if kind == "save-kill":
        at = rng.randint(2, MAX_STEPS - 1)
        info = {"killed_in_save_of": at, "exit": wait(spawn(run, kill_in_save_at=at))}
    else:
        info = stop_at_random(run, spawn(run), rng, signal.SIGKILL if kind == "kill" else signal.SIGTERM)
    info.update(
        kind=kind,
        latest_after_stop=latest(run),
        state_after_stop=state(run),
        temp_left=sorted(p.name for p in (run / "checkpoints").glob(".tmp-*"))
        if (run / "checkpoints").exists()
        else [],
    )
    info["resume_exit"] = wait(spawn(run))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10, help="SIGKILL trials at random points")
    p.add_argument("--save-kills", type=int, default=1, help="SIGKILL trials inside a checkpoint save")
    p.add_argument("--sigterms", type=int, default=1, help="SIGTERM trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--objective", choices=sorted(OBJECTIVE_ARGS), default="sft", help="train.objective of the runs")
    a = p.parse_args(argv)
    ARGS.extend(OBJECTIVE_ARGS[a.objective])  # later overrides win
    work = a.workdir or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    reference = work / "reference"
    if wait(spawn(reference)) != 0:
        print(f"reference run failed; see {reference}.log")
        return 1
    expected = losses(reference)
    kinds = ["kill"] * a.trials + ["save-kill"] * a.save_kills + ["sigterm"] * a.sigterms
    report = {"reference": expected, "trials": []}
    for i, kind in enumerate(kinds):
        run = work / f"trial-{i}"
        info = trial(kind, run, rng)
        got = losses(run)
        info.update(curve=got, match=got == expected)
        report["trials"].append(info)
        print(
            f"trial {i:2d} {kind:9s} stopped after step {info.get('logged_before_stop', info.get('killed_in_save_of'))}"
            f" (exit {info['exit']}), latest checkpoint {info['latest_after_stop']}, resumed: "
            f"{'curve identical' if info['match'] else 'CURVE DIFFERS'}"
        )
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    ok = all(t["match"] and t["resume_exit"] == 0 for t in report["trials"])
    print(f"{sum(t['match'] for t in report['trials'])}/{len(kinds)} resumed runs match the uninterrupted one")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
