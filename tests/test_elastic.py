"""Resuming on another process count (train/distributed/elastic.py): same global batch, same curve; another global batch, refused.

The expectation is the uninterrupted 1-process run's metrics.jsonl. The resumed curves are compared within the
tolerance of the sharding tests (2e-5 relative/absolute on every logged loss, learning rate, gradient norm and
eval loss; test_sharding.py): steps run on 2 processes sum their gradients in another order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from phinetune.config import dump_config
from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import CHECKPOINT_SHARDED, CHECKPOINT_STATE, RunDir
from phinetune.train.distributed.elastic import by_name, check_global_batch
from test_launch import losses
from test_sharding import COMMON, FSDP, assert_same_curve

ONE = ["train.grad_accum=2"]  # 1 process x 2 x 2: the same global batch (4) as
TWO = ["train.grad_accum=1"]  # 2 processes x 2 x 1


def rewind(run: Path, step: int) -> None:
    """Make a finished run look interrupted after `step`: later checkpoints gone, status as a kill leaves it."""
    for found, path in RunDir(run).checkpoint_dirs():
        if found > step:
            shutil.rmtree(path)
    RunDir(run).set_status(f"interrupted at step {step}")


def written_by(run: Path, step: int) -> dict:
    return json.loads((RunDir(run).checkpoints / f"step-{step}" / CHECKPOINT_STATE).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_a_checkpoint_moves_from_one_process_to_two_and_back(tiny_cfg, tmp_path, layout):
    from phinetune.train.recipe import train

    common = [*COMMON, "train.max_steps=5", f"output.dir={tmp_path / 'run'}"]
    run = train(tiny_cfg(*common, *ONE)).run.path
    expected = losses(run)  # uninterrupted, 1 process; checkpoints at steps 2 and 4

    rewind(run, 2)  # the 1-process checkpoint of step 2 continues on 2 processes ...
    two = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*common, *TWO), two)
    run_cli("train", str(two), "--nproc", "2", *(["--accelerate-config", str(FSDP)] if layout == "fsdp2" else []))
    assert_same_curve(expected, losses(run))
    state = written_by(run, 4)
    assert state["num_processes"] == 2 and state["global_batch"] == 4
    assert (RunDir(run).checkpoints / "step-4" / CHECKPOINT_SHARDED).is_dir() == (layout == "fsdp2")

    rewind(run, 4)  # ... and the 2-process checkpoint of step 4 continues on 1 process
    train(tiny_cfg(*common, *ONE))
    assert_same_curve(expected, losses(run))
    assert written_by(run, 4)["num_processes"] == 2  # resumed from it, not retrained


def test_resuming_with_another_global_batch_is_refused_naming_it(tiny_cfg, tmp_path):
    from phinetune.train.recipe import train

    common = [
        "train.batch_size=2",
        "train.max_steps=2",
        "train.save_every=1",
        "train.eval_every=100",
        "train.recall_check=false",
    ]
    run = train(tiny_cfg(*common, "train.grad_accum=1")).run.path
    rewind(run, 1)
    with pytest.raises(PhinetuneError) as refused:
        train(tiny_cfg(*common, "train.grad_accum=3"))
    message = str(refused.value)
    assert "global batch of 2 sequences per step (train.batch_size=2 x train.grad_accum=1 x 1 process(es))" in message
    assert (
        "this run's is 6 (2 x 3 x 1)" in message
        and "train.grad_accum=1 with train.batch_size=2 on 1 process(es)" in message
    )
    train(tiny_cfg(*common, "train.grad_accum=1"))  # the same global batch still resumes
    assert [r["step"] for r in RunDir(run).read_metrics() if "loss" in r] == [1, 2]


@settings(max_examples=200, deadline=None)
@given(st.tuples(*[st.integers(1, 8)] * 3), st.tuples(*[st.integers(1, 8)] * 3))
def test_only_a_changed_product_is_refused(then, now):
    state = dict(zip(["batch_size", "grad_accum", "num_processes"], then))
    refused = then[0] * then[1] * then[2] != now[0] * now[1] * now[2]
    try:
        check_global_batch(Path("ckpt"), state, None, *now)
    except PhinetuneError as exc:
        assert refused and str(exc).startswith("ckpt was trained with a global batch of")
    else:
        assert not refused


def test_optimizer_state_by_name_matches_torch_own_conversion():
    """by_name against torch.distributed.checkpoint's get_optimizer_state_dict on the same (unsharded) model."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": trained[:1]}, {"params": trained[1:], "lr": 0.5}])
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    ours = by_name(optimizer.state_dict(), model, optimizer)
    theirs = get_optimizer_state_dict(model, optimizer)
    assert list(ours["state"]) == list(theirs["state"]) == ["0.weight", "1.weight", "1.bias"]
    for name, values in theirs["state"].items():
        for key, value in values.items():
            assert torch.equal(ours["state"][name][key], value)
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    assert [g["lr"] for g in ours["param_groups"]] == [g["lr"] for g in theirs["param_groups"]]
    with pytest.raises(PhinetuneError, match="holds 2 parameters, this run trains 3"):
        by_name({"state": {}, "param_groups": [{"params": [0, 1]}]}, model, optimizer)


def test_a_rank_without_saved_random_state_gets_a_fixed_seed_of_its_own(tmp_path):
    from phinetune.train.distributed.elastic import seed_ranks_without_state

    draws = []
    for rank in (1, 1, 2):
        torch.manual_seed(12345)  # whatever state the rank happened to be in
        seed_ranks_without_state(tmp_path, 3, 5, rank)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])  # replays; differs between ranks
    (tmp_path / "random_states_1.pkl").write_bytes(
        b""
    )  # the checkpoint has rank 1's own: accelerate restored it, keep it
    torch.manual_seed(12345)
    expected = torch.rand(3)
    torch.manual_seed(12345)
    seed_ranks_without_state(tmp_path, 3, 5, 1)
    assert torch.equal(torch.rand(3), expected)
