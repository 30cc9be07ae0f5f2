"""Checkpoints: atomic, trainable-only, safely loadable; resume rules; kill -9 / SIGTERM and resume exactly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, hold_in_subprocess
from phinetune.config import dump_config
from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import RunDir, RunInfo
from phinetune.train import checkpoint as ck


class OneProcess:
    is_main_process, num_processes = True, 1

    def wait_for_everyone(self):
        pass


def test_checkpoints_hold_trainable_weights_and_load_without_pickle(tiny_cfg):
    from phinetune.train.recipe import train

    cfg = tiny_cfg("train.save_every=1", "train.keep_checkpoints=2", "train.eval_every=10")
    result = train(cfg)
    run = result.run
    assert [s for s, _ in ck.checkpoints(run)] == [3, 4]  # keep the newest 2
    assert not list(run.checkpoints.glob(".tmp-*"))
    last = ck.latest_checkpoint(run)
    weights = load_file(str(last / "model.safetensors"))
    assert weights and all("lora_" in k or "modules_to_save" in k for k in weights)  # no frozen base copied
    opt = torch.load(last / "optimizer.bin", weights_only=True)  # no arbitrary unpickling
    assert opt["state"]
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["num_processes"] == 1


def write_run(tmp_path, cfg, status="running", with_checkpoint=False):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    dump_config(cfg, run.config)
    run.write_info(RunInfo("base", "phi3", "lora", "none", "float32", status=status))
    if with_checkpoint:
        for step in (2, 4):
            (run.checkpoints / f"step-{step}").mkdir(parents=True)
            (run.checkpoints / f"step-{step}" / "trainer_state.json").write_text("{}")
        (run.checkpoints / ".tmp-step-6").mkdir()  # a save cut by a kill: never the latest
    return run


def test_same_config_resumes_from_latest_complete_checkpoint(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    run = write_run(tmp_path, cfg, with_checkpoint=True)
    got_run, got = ck.start_or_resume(tiny_cfg("train.save_every=3", "train.keep_checkpoints=5"), False, OneProcess())
    assert got == run.checkpoints / "step-4"


def test_different_config_is_refused_naming_the_key(tmp_path, tiny_cfg):
    write_run(tmp_path, tiny_cfg(), with_checkpoint=True)
    with pytest.raises(PhinetuneError, match=r"different run \(train.learning_rate: 0.003 there, 0.001 now"):
        ck.start_or_resume(tiny_cfg("train.learning_rate=1e-3"), False, OneProcess())


def test_finished_run_and_empty_resume_are_refused(tmp_path, tiny_cfg):
    with pytest.raises(PhinetuneError, match="holds no run to resume"):
        ck.start_or_resume(tiny_cfg(), True, OneProcess())
    write_run(tmp_path, tiny_cfg(), status="finished")
    with pytest.raises(PhinetuneError, match="already finished"):
        ck.start_or_resume(tiny_cfg(), False, OneProcess())


def test_same_run_without_checkpoint_starts_afresh(tmp_path, tiny_cfg):
    run = write_run(tmp_path, tiny_cfg())
    run.metrics.write_text('{"step": 0, "eval_loss": 1.0}\n')
    _, got = ck.start_or_resume(tiny_cfg(), False, OneProcess())
    assert got is None and not run.metrics.exists() and run.config.exists()


def test_truncate_metrics_drops_later_steps_and_a_cut_line(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text(
        '{"step": 0, "eval_loss": 5}\n{"step": 1, "loss": 4}\n{"step": 2, "loss": 3}\n'
        '{"step": 2, "eval_loss": 3}\n{"step": 3, "loss": 2}\n{"step": 4, "lo'
    )
    ck.truncate_metrics(run, 2, last_step=4)
    assert [(r["step"], list(r)[1]) for r in run.read_metrics()] == [
        (0, "eval_loss"),
        (1, "loss"),
        (2, "loss"),
        (2, "eval_loss"),
    ]


def test_resuming_from_the_last_step_drops_the_final_eval_it_will_redo(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text('{"step": 0, "eval_loss": 5}\n{"step": 4, "loss": 2}\n{"step": 4, "eval_loss": 2.5}\n')
    ck.truncate_metrics(run, 4, last_step=4)
    assert [(r["step"], list(r)[1]) for r in run.read_metrics()] == [(0, "eval_loss"), (4, "loss")]


def test_a_failed_save_leaves_the_previous_checkpoint_latest(tiny_cfg, monkeypatch):
    """A crash between writing the files and publishing them: the half-written folder is never 'latest'."""
    from phinetune.train.recipe import train

    real = ck._fsync_tree

    def crash_on_third(root):
        real(root)
        if root.name.endswith("-3"):
            raise KeyboardInterrupt  # stands in for a crash at the worst moment

    monkeypatch.setattr(ck, "_fsync_tree", crash_on_third)
    cfg = tiny_cfg("train.save_every=1", "train.keep_checkpoints=3", "train.eval_every=10")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    run = RunDir(cfg.output.dir)
    assert [s for s, _ in ck.checkpoints(run)] == [1, 2]
    state = json.loads((ck.latest_checkpoint(run) / "trainer_state.json").read_text())
    assert state["step"] == 2


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    """>= 5 SIGKILLs at random points, one inside a save, one SIGTERM; every resumed curve equals the reference."""
    seed = int(os.environ.get("PHINETUNE_KILL_SEED", random.randrange(10**6)))
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "kill_resume_trials.py"),
            "--trials",
            "5",
            "--save-kills",
            "1",
            "--sigterms",
            "1",
            "--seed",
            str(seed),
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    where = f"(seed {seed}; rerun with PHINETUNE_KILL_SEED={seed})\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert report.exists(), where
    trials = json.loads(report.read_text())["trials"]
    reference = json.loads(report.read_text())["reference"]
    assert len(reference) >= 8, where
    kills = [t for t in trials if t["kind"] == "kill"]
    assert len(kills) == 5 and all(t["exit"] == -9 for t in kills), where
    # kill -9 leaves run.json saying "running": readers see that no process holds the run any more
    assert all(t["state_before_stop"] == "running" and t["state_after_stop"] == "interrupted" for t in kills), where
    for t in trials:
        assert t["resume_exit"] == 0, where
        assert t["curve"] == reference, f"{t['kind']} trial stopped after step {t.get('logged_before_stop')} {where}"
    (save_kill,) = [t for t in trials if t["kind"] == "save-kill"]
    assert (
        save_kill["exit"] == -9
        and save_kill["state_after_stop"] == "interrupted"
        and save_kill["latest_after_stop"] == f"step-{save_kill['killed_in_save_of'] - 1}"
    ), where
    (term,) = [t for t in trials if t["kind"] == "sigterm"]
    assert term["exit"] == 143 and term["latest_after_stop"] is not None and not term["temp_left"], where
    assert term["state_before_stop"] == "running" and term["state_after_stop"] == "interrupted", where
    assert int(term["latest_after_stop"].split("-")[1]) >= term["logged_before_stop"], where
    assert proc.returncode == 0, where


def test_a_run_that_never_trained_is_replaced_by_its_fix(tmp_path, tiny_cfg):
    """A wrong data path or a failed pre-flight leaves config.yaml and run.json but no step: the corrected
    command (a different config) replaces the folder without output.overwrite."""
    run = write_run(tmp_path, tiny_cfg("data.train=/wrong/path.jsonl"), status="failed before training: data file ...")
    (run.path / "preflight.json").write_text("{}")
    got_run, got = ck.start_or_resume(tiny_cfg(), False, OneProcess())
    assert got is None and got_run.read_config().data.train == "builtin:riddles" and not run.info_file.exists()


def test_never_trained_folder_with_foreign_files_is_kept(tmp_path, tiny_cfg):
    run = write_run(tmp_path, tiny_cfg("train.learning_rate=1e-3"))
    (run.path / "my-notes.txt").write_text("not ours to delete")
    with pytest.raises(PhinetuneError, match="different run"):
        ck.start_or_resume(tiny_cfg(), False, OneProcess())
    assert (run.path / "my-notes.txt").exists()


def test_a_run_with_a_completed_step_is_not_replaced(tmp_path, tiny_cfg):
    write_run(tmp_path, tiny_cfg("train.learning_rate=1e-3"), status="interrupted at step 4", with_checkpoint=True)
    with pytest.raises(PhinetuneError, match="different run"):
        ck.start_or_resume(tiny_cfg(), False, OneProcess())


def test_stop_status_says_what_happened():
    from phinetune.errors import PreflightError
    from phinetune.train.guards import TrainingStopped
    from phinetune.train.recipe import stop_status

    assert (
        stop_status(PreflightError("pre-flight failed:\n  target 'q_proj' matches nothing"), None)
        == "failed at pre-flight: target 'q_proj' matches nothing"
    )
    assert stop_status(TrainingStopped("stopped by SIGTERM after step 3", 143), 3) == "interrupted at step 3"
    assert stop_status(KeyboardInterrupt(), 7) == "interrupted at step 7"
    assert stop_status(PhinetuneError("loss became nan at step 3"), 2) == "failed at step 3: loss became nan at step 3"
    assert (
        stop_status(PhinetuneError("data file 'x' does not exist"), None)
        == "failed before training: data file 'x' does not exist"
    )


def test_failed_start_is_recorded_then_the_fixed_command_trains(tiny_cfg):
    from phinetune.train.recipe import train

    with pytest.raises(PhinetuneError, match="does not exist"):
        train(tiny_cfg("data.train=/nonexistent/data.jsonl", "train.max_steps=1"))
    bad = RunDir(tiny_cfg().output.dir)
    assert bad.read_info().status.startswith(
        "failed before training: data file '/nonexistent/data.jsonl' does not exist"
    )
    result = train(tiny_cfg("train.max_steps=1"))  # no output.overwrite needed
    assert result.run.read_info().status == "finished"


def test_ddp_names_are_stored_as_the_unwrapped_model_names_them():
    """A DDP-wrapped state dict (and a checkpoint DDP wrote before names were unwrapped) loads on 1 process too."""
    assert ck.unwrapped_names({"module.a.weight": 1, "module.b": 2}) == {"a.weight": 1, "b": 2}
    assert ck.unwrapped_names({"module.a": 1, "lm_head.weight": 2}) == {
        "module.a": 1,
        "lm_head.weight": 2,
    }  # not all wrapped: kept
    assert ck.unwrapped_names({}) == {}


def test_a_run_still_training_is_neither_replaced_nor_resumed(tiny_cfg):
    """Another `train` into the folder of a live run (its process holds RUN/train.lock) stops before touching it."""
    cfg = tiny_cfg()
    run = RunDir.create(cfg)
    run.write_info(RunInfo("tiny", "phi3-mini", "lora", "none", "fp32", status="running"))
    proc = hold_in_subprocess(run.path)
    try:
        for overwrite in (False, True):
            with pytest.raises(
                PhinetuneError,
                match=rf"a process is still training in {run.path} \(pid {proc.pid} on .*\); wait for it",
            ):
                ck._decide(
                    run,
                    cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": overwrite})}),
                    resume=False,
                )
    finally:
        proc.kill()
        proc.wait()
    assert run.config.exists() and run.info_file.exists()
    assert ck._decide(run, cfg, resume=False) is None  # killed before its first checkpoint: a new start may replace it
