"""Multi-process training: launcher commands, accelerate configs, and 1-process vs 2-process parity on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, cli_here
from phinetune.config import dump_config
from phinetune.errors import PhinetuneError
from phinetune.train.distributed.launch import launch_command
from phinetune.train.loop import micro_batches

CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
EXPECTED = {
    "ddp": "MULTI_GPU",
    "fsdp": "FSDP",
    "fsdp-qlora": "FSDP",
    "deepspeed-zero2": "DEEPSPEED",
    "deepspeed-zero3": "DEEPSPEED",
}


def test_cpu_launch_uses_torchrun_with_accelerate_cpu_mode():
    cmd, env = launch_command(2, ["cfg.yaml", "train.max_steps=3"], use_gpu=False)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cmd[-5:] == ["-m", "phinetune", "train", "cfg.yaml", "train.max_steps=3"]
    assert env["ACCELERATE_USE_CPU"] == "true" and env["PHINETUNE_LAUNCHED"] == "1"


def test_gpu_launch_uses_accelerate_launch_with_the_config():
    cfg = ROOT / "configs" / "accelerate" / "fsdp.yaml"
    cmd, _ = launch_command(4, ["x.yaml"], cfg, use_gpu=True)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[3:7] == [
        "--config_file",
        str(cfg),
        "--num_processes",
        "4",
    ]
    with pytest.raises(PhinetuneError, match="needs GPUs"):  # FSDP1 + 4-bit base: GPUs only
        launch_command(2, [], cfg.with_name("fsdp-qlora.yaml"), use_gpu=False)
    with pytest.raises(PhinetuneError, match="ZeRO-3.*GPU-check-only"):
        launch_command(2, [], cfg.with_name("deepspeed-zero3.yaml"), use_gpu=False)


def test_cpu_launch_of_deepspeed_zero2_uses_accelerate_launch_in_fp32():
    """DeepSpeed's CPU accelerator over gloo: accelerate launch (not ACCELERATE_USE_CPU, under which accelerate never selects DeepSpeed)."""
    cfg = ROOT / "configs" / "accelerate" / "deepspeed-zero2.yaml"
    cmd, env = launch_command(2, ["x.yaml"], cfg, use_gpu=False)
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(cfg)]
    assert cmd[cmd.index("--mixed_precision") + 1] == "no" and "ACCELERATE_USE_CPU" not in {
        k for k, v in env.items() if v == "true"
    }
    gpu, _ = launch_command(2, ["x.yaml"], cfg, use_gpu=True)
    assert "--mixed_precision" not in gpu  # on GPUs the config's bf16 applies


def test_cpu_launch_of_the_fsdp2_config_shards_with_fully_shard():
    cmd, env = launch_command(2, ["x.yaml"], ROOT / "configs" / "accelerate" / "fsdp.yaml", use_gpu=False)
    assert (
        cmd[1:3] == ["-m", "torch.distributed.run"]
        and env["PHINETUNE_FSDP2_CPU"] == "1"
        and env["ACCELERATE_USE_CPU"] == "true"
    )
    _, plain = launch_command(2, ["x.yaml"], use_gpu=False)
    assert "PHINETUNE_FSDP2_CPU" not in plain or plain["PHINETUNE_FSDP2_CPU"] != "1"
    with pytest.raises(PhinetuneError, match="does not exist"):
        launch_command(2, [], Path("nope.yaml"), use_gpu=True)


def test_every_accelerate_config_is_shipped_and_parses():
    assert {c.stem for c in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_is_accepted_by_accelerate(path):
    """accelerate's own parsing: ClusterConfig rejects unknown keys, the launcher turns it into plugin settings."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    config = load_config_from_file(str(path))
    assert str(config.distributed_type).split(".")[-1] == EXPECTED[path.stem]
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "phinetune", "train"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_fsdp == (EXPECTED[path.stem] == "FSDP") and args.use_deepspeed == (
        EXPECTED[path.stem] == "DEEPSPEED"
    )
    if args.use_fsdp and str(args.fsdp_version) == "1":
        assert (
            args.fsdp_use_orig_params == "true" or args.fsdp_use_orig_params is True
        )  # LoRA mixes frozen and trainable
    if path.stem == "fsdp":
        assert str(args.fsdp_version) == "2"  # FSDP2: the one that also runs on CPU (train/distributed/sharding.py)
    if path.stem == "fsdp-qlora":
        assert args.mixed_precision == "no"
    if args.use_deepspeed:
        assert int(args.zero_stage) == int(path.stem[-1]) and float(args.gradient_clipping) == 1.0


def fake_loop(rows, processes, rank, batch_size, grad_accum):
    import math

    cfg = SimpleNamespace(train=SimpleNamespace(batch_size=batch_size, grad_accum=grad_accum, seed=3))
    steps_per_epoch = max(1, math.ceil(len(rows) / (batch_size * grad_accum * processes)))
    return SimpleNamespace(
        cfg=cfg,
        accelerator=SimpleNamespace(num_processes=processes, process_index=rank),
        train_rows=rows,
        steps_per_epoch=steps_per_epoch,
    )


def test_micro_batches_cover_the_same_global_rows_for_any_process_count():
    rows = [SimpleNamespace(id=i) for i in range(37)]
    for step in range(12):  # crosses epoch boundaries
        one = fake_loop(rows, 1, 0, 4, 4)
        single = sorted(r.id for mb in micro_batches(one, step) for r in mb)
        for n in (2, 4):
            parts = [micro_batches(fake_loop(rows, n, rank, 4, 4 // n), step) for rank in range(n)]
            assert all(len(p) == 4 // n for p in parts)
            assert sorted(r.id for p in parts for mb in p for r in mb) == single


def losses(run: Path) -> list[tuple]:
    return [
        (r["step"], r.get("loss", r.get("eval_loss")), r.get("lr"), r.get("grad_norm"))
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ]


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tiny_cfg, tmp_path):
    from phinetune.train.recipe import train

    common = [
        "train.batch_size=2",
        "train.max_steps=3",
        "adapter.dropout=0",
        "train.eval_every=2",
        "data.packing=false",
    ]
    one = train(tiny_cfg(*common, "train.grad_accum=2", f"output.dir={tmp_path / 'one'}"))
    two_cfg = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*common, "train.grad_accum=1", f"output.dir={tmp_path / 'two'}"), two_cfg)
    cli_here("train", str(two_cfg), "--nproc", "2")  # the launcher in this process; the 2 ranks are real processes
    expected, got = losses(one.run.path), losses(tmp_path / "two")
    assert [r[0] for r in got] == [r[0] for r in expected] and len(got) >= 5
    for a, b in zip(expected, got):  # loss, lr and grad norm of every step, eval losses (no lr/grad norm: None)
        assert [x is None for x in b] == [x is None for x in a], f"step {a[0]}: 1 process {a}, 2 processes {b}"
        numbers_a, numbers_b = [x for x in a[1:] if x is not None], [x for x in b[1:] if x is not None]
        assert numbers_b == pytest.approx(numbers_a, rel=2e-5, abs=2e-5), f"step {a[0]}: 1 process {a}, 2 processes {b}"


def test_a_killed_rank_is_named_in_one_sentence():
    """torchrun's own report of a 2-process run whose rank 1 was SIGKILLed (recorded by hand from
    `phinetune train ... --nproc 2` and `kill -9` of rank 1: the job ended 2 s later, checkpoints intact)."""
    from phinetune.train.distributed.launch import failure_sentence

    block = (ROOT / "tests" / "fixtures" / "torchrun_sigkill_rank1.txt").read_text()
    assert failure_sentence(block, 1).startswith("training failed: rank 1 was killed by SIGKILL;")
    raised = "[rank0]: ValueError: loss became nan at step 3\n" + block.replace(
        "exitcode  : -9", "exitcode  : 1"
    ).replace("rank      : 1 (local_rank: 1)", "rank      : 0 (local_rank: 0)")
    assert "rank 0 failed with ValueError: loss became nan at step 3" in failure_sentence(raised, 1)
    assert "exited with code 1" in failure_sentence("nothing torchrun wrote", 1)


@pytest.mark.slow
def test_deepspeed_zero2_on_two_cpu_processes_matches_one_process(tiny_cfg, tmp_path):
    """The shipped ZeRO-2 config, run on DeepSpeed's CPU accelerator over gloo (2 processes, grad_accum 1) against
    1 plain process with grad_accum 2: every logged figure within 2e-5 (measured: ~2e-6), and the saved adapter
    within a tenth of one Adam step (0.1 x lr, as tests/test_sharding.py; measured 1.8e-6)."""
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    from phinetune.train.recipe import train

    common = [
        "train.batch_size=2",
        "train.max_steps=3",
        "adapter.dropout=0",
        "train.eval_every=2",
        "data.packing=false",
    ]
    one = train(tiny_cfg(*common, "train.grad_accum=2", f"output.dir={tmp_path / 'one'}"))
    two_cfg = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*common, "train.grad_accum=1", f"output.dir={tmp_path / 'two'}"), two_cfg)
    cli_here(
        "train",
        str(two_cfg),
        "--nproc",
        "2",
        "--accelerate-config",
        str(ROOT / "configs" / "accelerate" / "deepspeed-zero2.yaml"),
    )
    expected, got = losses(one.run.path), losses(tmp_path / "two")
    assert [r[0] for r in got] == [r[0] for r in expected] and len(got) >= 5
    for a, b in zip(expected, got):
        numbers_a, numbers_b = [x for x in a[1:] if x is not None], [x for x in b[1:] if x is not None]
        assert numbers_b == pytest.approx(numbers_a, rel=2e-5, abs=2e-5), f"step {a[0]}: 1 process {a}, ZeRO-2 {b}"
    mine, theirs = (
        load_file(str(p / "adapter" / "adapter_model.safetensors")) for p in (one.run.path, tmp_path / "two")
    )
    assert mine.keys() == theirs.keys() and any("lora_A" in k for k in mine)
    for k in mine:
        assert theirs[k].shape == mine[k].shape and float((theirs[k] - mine[k]).abs().max()) < 0.1 * 3e-3, k


def test_a_rank_that_stopped_with_our_sentence_is_named_with_it():
    """torchrun's report of a real 2-process run whose rank 1 ran out of memory at step 3 (tests/test_rank_failure.py,
    PHINETUNE_INJECT_FAULT=oom:1:3): the sentence comes from the error file rank 1 wrote, shown in the report."""
    from phinetune.train.distributed.launch import failure_sentence, failures

    report = (ROOT / "tests" / "fixtures" / "torchrun_oom_rank1.txt").read_text()
    assert [(rank, code) for rank, code, _ in failures(report)] == [(1, 2), (0, -15)]  # the root cause first
    assert failure_sentence(report, 1).startswith(
        "training failed: rank 1 failed: out of memory at step 3 on rank 1 of 2; settings that use less memory: "
        "train.batch_size=1 train.grad_accum=2 (same global batch)"
    )
    assert failure_sentence(report, 1).endswith(
        "; the launcher stopped the other ranks. Run the same command again to resume from the latest checkpoint"
    )
    both = report.replace("exitcode  : -15 (pid: 12326)  (SIGTERM)", "exitcode  : 2 (pid: 12326)").replace(
        "traceback : Signal 15 (SIGTERM) received by PID 12326", "traceback : " + failures(report)[0][2]
    )
    assert failure_sentence(both, 1).startswith(
        "training failed: out of memory at step 3 on rank 1 of 2;"
    )  # every rank said it
    assert "(every rank stopped at once)" in failure_sentence(both, 1)


def test_the_sentence_a_rank_records_is_what_torchrun_reads(tmp_path, monkeypatch):
    """record_for_launcher against torchrun's own reader of worker error files (ProcessFailure)."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from phinetune.train.distributed.launch import record_for_launcher

    file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(file))
    record_for_launcher("out of memory at step 3 on rank 1 of 2;\n  settings that use less memory: ...")
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file=str(file))
    assert failure.message["message"] == "out of memory at step 3 on rank 1 of 2; settings that use less memory: ..."
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    record_for_launcher("not launched: nothing written")  # no error: a single process has no launcher to tell


def test_a_collective_timeout_names_the_waiting_rank_and_the_ones_it_waited_for():
    """torchrun's report of a real 2-process run whose rank 1 hung at step 3 (PHINETUNE_INJECT_FAULT=hang:1:3,
    PHINETUNE_DIST_TIMEOUT=15): rank 0 gave up in gloo after 15 s, then the launcher stopped rank 1."""
    from phinetune.train.distributed.launch import failure_sentence

    report = (ROOT / "tests" / "fixtures" / "torchrun_hang_rank1.txt").read_text()
    assert failure_sentence(report, 1).startswith(
        "training failed: rank 0 waited 15 s (PHINETUNE_DIST_TIMEOUT) in a collective for the other ranks (1) and gave up: "
        "one of them is stuck or far slower; the launcher stopped them."
    )
