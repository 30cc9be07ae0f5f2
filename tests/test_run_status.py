"""runs/status.py: a live run, a killed one (kill -9 leaves run.json saying "running") and a damaged one, told apart;
and what a damaged or unfinished run offers instead really loads."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from conftest import hold_in_subprocess, linked_copy
from phinetune.errors import PhinetuneError
from phinetune.runs import status
from phinetune.runs.loading import load_for_inference
from phinetune.runs.run_dir import RunDir, RunInfo
from phinetune.runs.status import final_weights_problem, hold_run, holder, run_status


def replace_info(run: RunDir, **changes) -> None:
    """Change run.json in a linked copy: a new file, so the original run keeps its own."""
    info = json.loads(run.info_file.read_text())
    run.info_file.unlink()
    run.info_file.write_text(json.dumps({**info, **changes}))


@pytest.fixture
def held(tmp_path):
    """A run recorded as running, whose lock a separate process holds until the test kills it."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_info(RunInfo("tiny", "phi3-mini", "lora", "none", "fp32", status="running"))
    proc = hold_in_subprocess(run.path)
    yield run, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_live_run_is_running_and_a_killed_one_is_interrupted(held):
    run, proc = held
    now = run_status(run)
    assert now.state == "running" and f"pid {proc.pid} on " in now.text
    assert holder(run)["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(run.info_file.read_text())["status"] == "running"  # what kill -9 leaves behind
    after = run_status(run)
    assert after.state == "interrupted" and "killed" in after.text and holder(run) is None


def test_a_second_trainer_cannot_take_a_held_run(held, monkeypatch):
    run, proc = held
    monkeypatch.setattr(status, "TAKE_LOCK_S", 0.1)
    with pytest.raises(PhinetuneError, match=rf"another process is training in {run.path} \(pid {proc.pid} on "):
        hold_run(run)
    proc.kill()
    proc.wait()
    lock = hold_run(run)  # free once its holder is gone
    assert holder(run) is not None  # this process holds it now: another descriptor sees it taken
    lock.release()
    assert holder(run) is None


@pytest.mark.parametrize(
    "recorded,state",
    [
        ("finished", "finished"),
        ("interrupted at step 4", "interrupted"),
        ("failed at step 3: loss is NaN", "failed"),
        ("failed at pre-flight: x", "failed"),
    ],
)
def test_what_run_json_records_is_kept(tmp_path, recorded, state):
    run = RunDir(tmp_path)
    run.write_info(RunInfo("tiny", "phi3-mini", "lora", "none", "fp32", status=recorded))
    assert run_status(run) == status.RunStatus(state, recorded)


def test_a_missing_run_json_is_a_damaged_run(tmp_path):
    got = run_status(RunDir(tmp_path))
    assert got.state == "damaged" and "run.json is missing" in got.text


def test_training_holds_the_lock_while_it_trains_and_lets_go(tiny_cfg, monkeypatch):
    from phinetune.train import recipe
    from phinetune.train.checkpoint import _decide

    seen = []
    real_save = recipe.save

    def save_and_look(loop):
        seen.append(run_status(loop.run))
        with pytest.raises(
            PhinetuneError, match=f"a process is still training in {loop.run.path} \\(pid {os.getpid()} "
        ):
            _decide(loop.run, loop.cfg, resume=False)  # a second `train` into the same folder
        real_save(loop)

    monkeypatch.setattr(recipe, "save", save_and_look)
    run = recipe.train(tiny_cfg("train.max_steps=1")).run
    assert seen[0].state == "running" and f"pid {os.getpid()}" in seen[0].text
    assert holder(run) is None and run_status(run).state == "finished"


# ---------------------------------------------------------------- damaged and unfinished runs


def damaged(checkpointed_run, tmp_path, *remove: str) -> RunDir:
    run = RunDir(linked_copy(checkpointed_run, tmp_path / "run"))
    for name in remove:
        path = run.path / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    return run


def test_an_intact_finished_run_has_no_problem(checkpointed_run):
    assert final_weights_problem(RunDir(checkpointed_run)) is None


def _logits(loaded):
    with torch.no_grad():
        return loaded.model(torch.tensor([[3, 11, 42, 99]])).logits


def test_deleted_adapter_weights_name_the_file_and_the_checkpoint_offered_loads(checkpointed_run, tmp_path):
    run = damaged(checkpointed_run, tmp_path, "adapter/adapter_model.safetensors")
    problem = final_weights_problem(run)
    assert problem == (
        f"{run.path} is damaged: {run.adapter / 'adapter_model.safetensors'} is missing; "
        "pass --checkpoint last to use its last checkpoint (step-4)"
    )
    with pytest.raises(PhinetuneError, match="is damaged: .*adapter_model.safetensors is missing"):
        load_for_inference(str(run.path))
    # What is offered works: the last checkpoint is the final step, so it gives the original run's model.
    torch.testing.assert_close(
        _logits(load_for_inference(str(run.path), "fp32", checkpoint="last")),
        _logits(load_for_inference(str(checkpointed_run), "fp32")),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_deleted_adapter_folder_is_damage_not_an_unfinished_run(checkpointed_run, tmp_path):
    run = damaged(checkpointed_run, tmp_path, "adapter")
    assert (
        final_weights_problem(run)
        == f"{run.path} is damaged: {run.adapter} is missing; pass --checkpoint last to use its last checkpoint (step-4)"
    )


def test_without_checkpoints_a_damaged_run_is_trained_again_with_overwrite(checkpointed_run, tmp_path):
    run = damaged(checkpointed_run, tmp_path, "adapter", "checkpoints")
    assert final_weights_problem(run).endswith(
        "it kept no checkpoint to use instead; train it again with output.overwrite=true"
    )


def test_a_checkpoint_without_its_weights_is_not_offered(checkpointed_run, tmp_path):
    run = damaged(checkpointed_run, tmp_path, "adapter", "checkpoints/step-4/model.safetensors")
    assert final_weights_problem(run).endswith("use its last checkpoint (step-2)")
    with pytest.raises(
        PhinetuneError, match=r"--checkpoint step-4: .*model.safetensors is missing, so step-4 of .* cannot be loaded"
    ):
        load_for_inference(str(run.path), checkpoint="step-4")


def test_a_deleted_tokenizer_is_named(checkpointed_run, tmp_path):
    run = damaged(checkpointed_run, tmp_path, "tokenizer")
    assert final_weights_problem(run) == (
        f"{run.path} is damaged: {run.tokenizer} is missing; "
        "it kept no checkpoint to use instead; train it again with output.overwrite=true"
    )


def test_a_killed_run_says_interrupted_and_offers_its_last_checkpoint(checkpointed_run, tmp_path):
    """What kill -9 leaves: run.json still "running", no final weights, nobody holding the run."""
    run = damaged(checkpointed_run, tmp_path, "adapter")
    replace_info(run, status="running")
    problem = final_weights_problem(run)
    assert problem.startswith(
        f"{run.path} is an unfinished run (interrupted after checkpoint step-4: no process holds the run"
    )
    assert problem.endswith("pass --checkpoint last to use its last checkpoint (step-4)")


def test_saved_weights_of_an_unfinished_run_are_not_trusted(checkpointed_run, tmp_path):
    """Killed inside the final save: adapter/ is there but may be cut; only run.json's "finished" vouches for it."""
    run = damaged(checkpointed_run, tmp_path)
    replace_info(run, status="interrupted at step 4")
    assert final_weights_problem(run) == (
        f"{run.path} is an unfinished run (interrupted at step 4) with no final weights; "
        "pass --checkpoint last to use its last checkpoint (step-4)"
    )
