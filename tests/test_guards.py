"""Guards: NaN loss, full disk, out of memory and SIGTERM each stop with one clear sentence."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch

from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import RunDir
from phinetune.train import checkpoint as ck
from phinetune.train import recipe
from phinetune.train.guards import StopRequests, oom_message
from phinetune.train.metrics import MetricsLog
from phinetune.train.objectives import sft


def poison_loss_at(monkeypatch, call: int, exc=None):
    """Make the `call`-th loss_sum return NaN (or raise `exc`)."""
    real, calls = sft.loss_sum, {"n": 0}

    def patched(model, batch):
        calls["n"] += model.training  # training micro-batches only, not eval
        loss, n = real(model, batch)
        if calls["n"] == call and model.training:
            if exc is not None:
                raise exc
            return loss * float("nan"), n
        return loss, n

    monkeypatch.setattr(sft, "loss_sum", patched)


def test_nan_loss_names_the_step_and_the_samples_and_saves_nothing_after(tiny_cfg, monkeypatch):
    poison_loss_at(monkeypatch, 3)  # step 1 = loss calls 1-2 (grad_accum=2), step 2 starts at call 3
    cfg = tiny_cfg("train.grad_accum=2", "train.save_every=1", "train.eval_every=10")
    with pytest.raises(PhinetuneError) as err:
        recipe.train(cfg)
    msg = str(err.value)
    assert "loss became nan at step 2" in msg and "nothing after step 1 was saved" in msg
    assert "The batch held: " in msg and " samples: " in msg and "learning_rate" in msg
    assert [s for s, _ in ck.checkpoints(RunDir(cfg.output.dir))] == [1]


def test_oom_suggests_settings_that_use_less_memory(tiny_cfg, monkeypatch):
    poison_loss_at(monkeypatch, 1, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(
        PhinetuneError,
        match=r"out of memory at step 1; .*train.batch_size=2 train.grad_accum=2 .*gradient_checkpointing=true.*model.quant=nf4",
    ):
        recipe.train(tiny_cfg())


def test_oom_as_runtime_error_is_caught_and_other_errors_are_not(tiny_cfg, monkeypatch):
    cfg = tiny_cfg()
    assert "data.max_length=256" in oom_message(cfg, 0)
    poison_loss_at(monkeypatch, 1, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        recipe.train(tiny_cfg("output.overwrite=true"))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_checkpoint_names_the_last_good_one(tiny_cfg, monkeypatch):
    real, calls = ck._fsync_tree, {"n": 0}

    def fill_disk_on_second(root):
        calls["n"] += 1
        if calls["n"] == 2:
            enospc()
        real(root)

    monkeypatch.setattr(ck, "_fsync_tree", fill_disk_on_second)
    cfg = tiny_cfg("train.save_every=1", "train.eval_every=10")
    with pytest.raises(
        PhinetuneError,
        match=r"disk full while writing checkpoint .*step-2 .*MiB free.*last complete checkpoint is .*step-1.*--resume",
    ):
        recipe.train(cfg)
    run = RunDir(cfg.output.dir)
    assert not list(run.checkpoints.glob(".tmp-*"))  # the partial save was removed, not left behind
    assert [s for s, _ in ck.checkpoints(run)] == [1]


def test_full_disk_while_logging_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "open", enospc)
    with pytest.raises(PhinetuneError, match="disk full while writing metrics .*metrics.jsonl"):
        MetricsLog(tmp_path / "metrics.jsonl").write(step=1, loss=2.0)


def test_other_os_errors_are_not_disguised_as_full_disk(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(PermissionError):
        MetricsLog(tmp_path / "metrics.jsonl").write(step=1, loss=2.0)


def test_sigterm_is_recorded_not_fatal_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
        err = stop.stopped(3, Path("RUN/checkpoints/step-3"))
    assert signal.getsignal(signal.SIGTERM) == before
    assert err.exit_code == 143 and "stopped by SIGTERM after step 3" in str(err) and "step-3" in str(err)


def test_sigterm_mid_training_saves_a_checkpoint_and_resume_matches(tiny_cfg, monkeypatch):
    """In-process: SIGTERM during step 2 -> checkpoint at step 2 -> resume reproduces the uninterrupted curve."""
    reference = recipe.train(
        tiny_cfg("train.eval_every=10", "output.dir=" + str(Path(tiny_cfg().output.dir).parent / "ref"))
    )
    expected = [(r["step"], r.get("loss")) for r in reference.run.read_metrics() if "loss" in r]
    real, calls = sft.loss_sum, {"n": 0}

    def term_in_step_2(model, batch):
        calls["n"] += model.training
        if calls["n"] == 2 and model.training:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, batch)

    monkeypatch.setattr(sft, "loss_sum", term_in_step_2)
    cfg = tiny_cfg("train.eval_every=10")
    with pytest.raises(PhinetuneError, match="stopped by SIGTERM after step 2") as err:
        recipe.train(cfg)
    assert err.value.exit_code == 143
    assert [s for s, _ in ck.checkpoints(RunDir(cfg.output.dir))] == [2]
    monkeypatch.setattr(sft, "loss_sum", real)
    resumed = recipe.train(cfg)
    assert [(r["step"], r.get("loss")) for r in resumed.run.read_metrics() if "loss" in r] == expected


def test_a_nan_in_one_rank_is_named_with_that_ranks_batch(monkeypatch):
    """Every rank sees the same summed NaN; the sentence names the rank whose own loss was not finite, with its batch.
    The exchange between ranks (accelerate's gather_object) is replaced by what 2 ranks would return."""
    from types import SimpleNamespace

    import accelerate.utils

    from phinetune.train.guards import check_finite

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [(0, True, "rank 0's rows"), mine[0]])
    monkeypatch.setattr("phinetune.train.guards.describe_batch", lambda micro, tokenizer: "rank 1's rows")
    check_finite(1.5, 2, [], None, SimpleNamespace(num_processes=2, process_index=1), 0.7)  # finite: nothing to say
    with pytest.raises(PhinetuneError) as err:
        check_finite(float("nan"), 2, [], None, SimpleNamespace(num_processes=2, process_index=1), float("nan"))
    assert str(err.value).startswith(
        "loss became nan at step 3 on rank 1 of 2; nothing after step 2 was saved. The batch held: rank 1's rows."
    )
