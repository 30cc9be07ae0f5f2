"""Launch templates for clusters (train/distributed/cluster.py): they render for N nodes, and the SLURM script, run under a
fake `srun` that starts its tasks on this machine, forms one 2-node job whose curve equals 1 process's."""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, SRC, cli_here, run_cli
from phinetune.config import dump_config
from phinetune.errors import PhinetuneError
from phinetune.train.distributed.cluster import ClusterJob, render
from phinetune.train.distributed.launch import Nodes, launch_command, nodes_from_options


def train_args(command: str) -> list[str]:
    """The arguments after `phinetune train` in a rendered command line."""
    words = shlex.split(command)
    assert words[:2] == ["phinetune", "train"], words
    return words[2:]


def parsed_train_options(args: list[str]) -> dict:
    """`phinetune train ARGS` as the CLI itself parses them (typer's click command), without running it."""
    from typer.main import get_command

    from phinetune.cli import app

    train = get_command(app).commands["train"]
    return train.make_context("train", list(args)).params


@settings(max_examples=15, deadline=None)
@given(nodes=st.integers(1, 64), nproc=st.integers(1, 8))
def test_the_pytorchjob_has_one_master_and_n_minus_1_workers(nodes, nproc):
    manifest = yaml.safe_load(render("k8s", ClusterJob("cfg.yaml", ("output.dir=/runs/a",), nodes, nproc, "/runs/a")))
    assert manifest["kind"] == "PyTorchJob"
    roles = manifest["spec"]["pytorchReplicaSpecs"]
    assert roles["Master"]["replicas"] == 1 and roles.get("Worker", {"replicas": 0})["replicas"] == nodes - 1
    for role in roles.values():
        container = role["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == nproc
        # The pod's command, with the variables the operator sets, is a valid multi-node `phinetune train`.
        line = (
            container["args"][0]
            .replace("$RANK", str(nodes - 1))
            .replace("$MASTER_ADDR", "master-0")
            .replace("$MASTER_PORT", "29500")
        )
        params = parsed_train_options(train_args(line))
        assert list(params["args"]) == ["cfg.yaml", "output.dir=/runs/a"] and params["nproc"] == nproc
        assert nodes_from_options(
            params["nnodes"], params["node_rank"], params["rdzv_endpoint"], params["rdzv_id"]
        ) == (Nodes(nodes, nodes - 1, "master-0:29500", "phinetune"))
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/runs" in mounts and "/dev/shm" in mounts


@settings(max_examples=15, deadline=None)
@given(nodes=st.integers(1, 64), nproc=st.integers(1, 8))
def test_the_sbatch_script_asks_for_n_nodes_and_one_task_each(nodes, nproc):
    script = render(
        "slurm", ClusterJob("cfg.yaml", (), nodes, nproc, "runs/a", accelerate_config="configs/accelerate/fsdp.yaml")
    )
    assert f"#SBATCH --nodes={nodes}\n" in script and "#SBATCH --ntasks-per-node=1\n" in script
    assert f"#SBATCH --gpus-per-node={nproc}\n" in script
    assert f"--nproc {nproc} --accelerate-config configs/accelerate/fsdp.yaml" in script
    no_gpu = render("slurm", ClusterJob("cfg.yaml", (), nodes, nproc, "runs/a", gpus_per_node=0))
    assert "--gpus-per-node" not in no_gpu


def test_bad_template_requests_are_one_sentence():
    with pytest.raises(PhinetuneError, match="unknown; choose one of slurm, k8s"):
        render("pbs", ClusterJob("cfg.yaml"))
    with pytest.raises(PhinetuneError, match="not under the shared volume --shared-dir /runs"):
        render("k8s", ClusterJob("cfg.yaml", run_dir="runs/local"))
    with pytest.raises(PhinetuneError, match="--job-name 'My Job'"):
        render("slurm", ClusterJob("cfg.yaml", job_name="My Job"))


def test_multi_node_launch_uses_the_c10d_rendezvous():
    nodes = nodes_from_options(2, 1, "127.0.0.1:29611", "job7")
    cmd, env = launch_command(1, ["cfg.yaml"], use_gpu=False, nodes=nodes)
    assert "--standalone" not in cmd and env["ACCELERATE_USE_CPU"] == "true"
    at = cmd.index("--rdzv_backend")
    assert cmd[at : at + 8] == [
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "127.0.0.1:29611",
        "--rdzv_id",
        "job7",
        "--rdzv_conf",
        "is_host=0",
    ]
    assert cmd[cmd.index("--nnodes") + 1] == "2"
    host, _ = launch_command(1, ["cfg.yaml"], use_gpu=False, nodes=nodes_from_options(2, 0, "127.0.0.1:29611", "job7"))
    assert "is_host=1" in host  # node 0 serves the rendezvous store
    gpu, _ = launch_command(4, ["cfg.yaml"], use_gpu=True, nodes=nodes)
    assert (
        gpu[gpu.index("--num_processes") + 1] == "8" and gpu[gpu.index("--machine_rank") + 1] == "1"
    )  # accelerate counts all nodes
    for bad, words in [
        ((2, 2, "127.0.0.1:1", "j"), "--node-rank 2: expected 0 to 1"),
        ((2, 0, None, "j"), "needs --rdzv-endpoint"),
        ((2, 0, "localhost", "j"), "expected HOST:PORT"),
        ((1, 1, None, "j"), "pass --nnodes too"),
    ]:
        with pytest.raises(PhinetuneError, match=words):
            nodes_from_options(*bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


FAKE_SRUN = """#!/bin/bash
# A stand-in for SLURM's srun on one machine: drop srun's options, then start the command once per node,
# as srun does, with that task's SLURM_NODEID / SLURM_PROCID, and fail if any task fails.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
  SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" > "$FAKE_SRUN_LOGS/node$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def curve(run: Path) -> list[tuple]:
    return [
        (r["step"], r.get("loss", r.get("eval_loss")), r.get("lr"), r.get("grad_norm"))
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ]


@pytest.mark.slow
def test_the_slurm_script_under_a_fake_srun_trains_one_two_node_job_equal_to_one_process(tiny_cfg, tmp_path):
    """Two launches of `phinetune train --nnodes 2 --node-rank R --rdzv-endpoint 127.0.0.1:PORT` (1 process each,
    grad_accum 1) against 1 process with grad_accum 2: the same global batch, so every logged loss, learning
    rate, gradient norm and eval loss agree within 2e-5 (as the DDP parity test in test_launch.py)."""
    from phinetune.train.recipe import train

    common = [
        "train.batch_size=2",
        "train.max_steps=3",
        "adapter.dropout=0",
        "train.eval_every=2",
        "data.packing=false",
        "train.recall_check=false",
    ]
    one = train(tiny_cfg(*common, "train.grad_accum=2", f"output.dir={tmp_path / 'one'}"))
    cfg_file = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*common, "train.grad_accum=1", f"output.dir={tmp_path / 'two'}"), cfg_file)
    script = tmp_path / "job.sbatch"
    run_cli(
        "launch-template",
        "slurm",
        str(cfg_file),
        "--nodes",
        "2",
        "--nproc",
        "1",
        "--gpus-per-node",
        "0",
        "--out",
        str(script),
    )

    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir(), logs.mkdir()
    executable(bin_dir / "srun", FAKE_SRUN)
    executable(
        bin_dir / "scontrol", "#!/bin/bash\necho 127.0.0.1\n"
    )  # `scontrol show hostnames LIST`: node 0 is this machine
    executable(bin_dir / "phinetune", f'#!/bin/bash\nexec {shlex.quote(sys.executable)} -m phinetune "$@"\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(SRC),
        "HF_HUB_OFFLINE": "1",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[0-1]",
        "MASTER_PORT": str(free_port()),
        "FAKE_SRUN_LOGS": str(logs),
    }
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    node_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{node_logs}"
    assert "rendezvous 127.0.0.1:" in proc.stdout and "(id 4242)" in proc.stdout

    expected, got = curve(one.run.path), curve(tmp_path / "two")
    assert [r[0] for r in got] == [r[0] for r in expected] and len(got) >= 5
    for a, b in zip(expected, got):
        assert [x is None for x in b] == [x is None for x in a], f"step {a[0]}: 1 process {a}, 2 nodes {b}"
        numbers_a, numbers_b = [x for x in a[1:] if x is not None], [x for x in b[1:] if x is not None]
        assert numbers_b == pytest.approx(numbers_a, rel=2e-5, abs=2e-5), f"step {a[0]}: 1 process {a}, 2 nodes {b}"
    assert json.loads((tmp_path / "two" / "run.json").read_text())["status"] == "finished"


def test_launch_template_without_a_config_is_refused(tmp_path):
    """The embedded default is a tiny CPU model: a 2-node, 24-hour GPU job for it is never what was meant."""
    script = tmp_path / "job.sbatch"
    for kind in ("slurm", "k8s"):
        proc = cli_here("launch-template", kind, "--out", str(script), check=False)
        out = " ".join(proc.stdout.split())
        assert proc.returncode == 2 and f"launch-template {kind} needs the run config every node trains" in out, out
        assert "Traceback" not in proc.stdout + proc.stderr and not script.exists()
    config = ROOT / "configs" / "phi3.5-mini-qlora.yaml"
    cli_here("launch-template", "slurm", "--config", str(config), "output.dir=/shared/runs/a", "--out", str(script))
    assert f"phinetune train {config} output.dir=/shared/runs/a" in " ".join(script.read_text().split())
