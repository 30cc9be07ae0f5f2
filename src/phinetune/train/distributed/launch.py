"""`phinetune train --nproc N`: re-run the same command under a multi-process launcher.

No distributed engine of our own: on GPUs the launcher is `accelerate launch` (which reads an accelerate
config for DDP, FSDP or DeepSpeed: configs/accelerate/*.yaml); on CPU it is torch.distributed.run with
ACCELERATE_USE_CPU=true, because `accelerate launch --cpu` runs one process unless mpirun is set up, while
torchrun + that flag gives accelerate's MULTI_CPU mode over gloo. An FSDP version-2 config on CPU runs
PyTorch's fully_shard over gloo (train/distributed/sharding.py: accelerate does not select FSDP on CPU); the DeepSpeed
ZeRO-2 config runs on DeepSpeed's CPU accelerator over gloo through `accelerate launch`; the other configs
(FSDP1, QLoRA + FSDP, ZeRO-3) are GPU-check-only and refused on CPU.

`--nnodes N --node-rank R --rdzv-endpoint HOST:PORT` makes this launch one node of an N-node job: torchrun's
c10d rendezvous at HOST:PORT (node 0 hosts it) joins the nodes and assigns the global ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from phinetune.config.load import read_yaml
from phinetune.errors import PhinetuneError
from phinetune.extras import require
from phinetune.train.distributed.sharding import ENV as SHARDING_ENV


@dataclass(frozen=True)
class Nodes:
    """This launch's part in a multi-node job: node `rank` of `count`, meeting at the c10d rendezvous `endpoint`."""

    count: int
    rank: int
    endpoint: str  # HOST:PORT of node 0, where the rendezvous store runs
    job_id: str = "phinetune"  # the rendezvous id: every node of one job passes the same (SLURM: $SLURM_JOB_ID)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise PhinetuneError(f"--nnodes {self.count}: expected at least 1 node")
        if not 0 <= self.rank < self.count:
            raise PhinetuneError(f"--node-rank {self.rank}: expected 0 to {self.count - 1} for --nnodes {self.count}")
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PhinetuneError(
                f"--rdzv-endpoint {self.endpoint!r}: expected HOST:PORT of node 0, e.g. 127.0.0.1:29500"
            )

    def torchrun_args(self) -> list[str]:
        # c10d assigns the global ranks itself (torchrun ignores --node_rank with it); is_host makes node 0's
        # agent the one that serves the rendezvous store, instead of whichever matches the host name first.
        return [
            "--nnodes",
            str(self.count),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            self.endpoint,
            "--rdzv_id",
            self.job_id,
            "--rdzv_conf",
            f"is_host={int(self.rank == 0)}",
        ]

    def accelerate_args(self, nproc: int) -> list[str]:
        host, _, port = self.endpoint.rpartition(":")
        return [
            "--num_machines",
            str(self.count),
            "--machine_rank",
            str(self.rank),
            "--main_process_ip",
            host,
            "--main_process_port",
            port,
            "--rdzv_backend",
            "c10d",
            "--num_processes",
            str(nproc * self.count),
        ]


def nodes_from_options(nnodes: int, node_rank: int, endpoint: str | None, job_id: str) -> Nodes | None:
    """`--nnodes/--node-rank/--rdzv-endpoint/--rdzv-id` as a Nodes, or None for a one-node launch."""
    if nnodes == 1 and not endpoint:  # with an endpoint, a 1-node job still meets there (a 1-node cluster template)
        if node_rank:
            raise PhinetuneError(f"--node-rank {node_rank} is for multi-node jobs; pass --nnodes too (e.g. --nnodes 2)")
        return None
    if not endpoint:
        raise PhinetuneError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT of node 0 (e.g. 127.0.0.1:29500 for two launches on one machine)"
        )
    return Nodes(nnodes, node_rank, endpoint, job_id)


def launch_command(
    nproc: int,
    train_args: list[str],
    accelerate_config: Path | None = None,
    use_gpu: bool | None = None,
    nodes: Nodes | None = None,
    module: list[str] | None = None,
) -> tuple[list[str], dict]:
    """The command and environment that run `phinetune train TRAIN_ARGS` on `nproc` processes (per node).
    `module`: another entry point to launch the same way instead (`bench train --nproc`: ["-m", "phinetune.bench.scale_child", ...])."""
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    env = {**os.environ, "PHINETUNE_LAUNCHED": "1"}
    target = module or ["-m", "phinetune", "train", *train_args]
    if accelerate_config is not None and not accelerate_config.exists():
        raise PhinetuneError(
            f"--accelerate-config {accelerate_config} does not exist; see configs/accelerate/ for DDP, FSDP and DeepSpeed configs"
        )
    stage = deepspeed_stage(accelerate_config) if accelerate_config is not None else None
    if stage is not None:
        require(f"--accelerate-config {accelerate_config} (DeepSpeed)", "deepspeed", "deepspeed")
    if use_gpu or stage == 2:
        total = nproc * (nodes.count if nodes else 1)  # one process in all (bench train --nproc 1,...): no --multi_gpu
        config = (
            ["--config_file", str(accelerate_config)] if accelerate_config else ["--multi_gpu"] if total > 1 else []
        )
        processes = nodes.accelerate_args(nproc) if nodes else ["--num_processes", str(nproc)]
        if nodes and stage is not None:  # torchrun on every node, not DeepSpeed's own ssh (pdsh) launcher
            processes += ["--deepspeed_multinode_launcher", "standard"]
        # ZeRO-2 on CPU: DeepSpeed's CPU accelerator over gloo, in the model's dtype (the config's bf16 is for GPUs)
        precision = [] if use_gpu else ["--mixed_precision", "no"]
        env.update({} if use_gpu else {"OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
        return [sys.executable, "-m", "accelerate.commands.launch", *config, *processes, *precision, *target], env
    if accelerate_config is not None:
        if stage == 3:
            raise PhinetuneError(
                f"--accelerate-config {accelerate_config} (DeepSpeed ZeRO-3) is GPU-check-only: on CPU it trains, but its gradient "
                "norms differ from one process and it saves modules_to_save weights empty (docs/scale-and-resume.md); "
                "use configs/accelerate/deepspeed-zero2.yaml or fsdp.yaml on CPU"
            )
        if not is_fsdp2(accelerate_config):
            raise PhinetuneError(
                f"--accelerate-config {accelerate_config} needs GPUs (on CPU only an FSDP config with fsdp_version: 2 "
                "and DeepSpeed ZeRO-2 run, e.g. configs/accelerate/fsdp.yaml); drop it to train with DDP over gloo on CPU"
            )
        env[SHARDING_ENV] = "1"
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    where = nodes.torchrun_args() if nodes else ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *where, *target], env


def read_accelerate_config(path: Path) -> dict:
    return read_yaml(
        Path(path), "accelerate config", "configs/accelerate/fsdp.yaml", "distributed_type, num_processes, ..."
    )


def deepspeed_stage(path: Path) -> int | None:
    """The ZeRO stage of a DeepSpeed accelerate config, None for any other config."""
    config = read_accelerate_config(path)
    if config.get("distributed_type") != "DEEPSPEED":
        return None
    return int((config.get("deepspeed_config") or {}).get("zero_stage", 0))


def is_fsdp2(path: Path) -> bool:
    """An accelerate config asking for FSDP version 2 (and nothing CPU cannot do: no 4-bit base)."""
    config = read_accelerate_config(path)
    fsdp = config.get("fsdp_config") or {}
    return config.get("distributed_type") == "FSDP" and int(fsdp.get("fsdp_version", 1)) == 2


def launch(nproc: int, train_args: list[str], accelerate_config: Path | None = None, nodes: Nodes | None = None) -> int:
    """Run the launcher, passing its output through; when a rank fails, end with one sentence naming it.

    Bounded time: torchrun (and accelerate launch, which runs it) stops every other worker as soon as one
    exits non-zero or is killed, so no rank waits in a collective for a peer that is gone; a rank that is
    alive but stuck is ended by the process-group timeout (DIST_TIMEOUT_S, set in train/recipe.py)."""
    if os.environ.get("PHINETUNE_LAUNCHED") == "1":
        raise PhinetuneError("--nproc given inside a launched process; pass it once, to the outer `phinetune train`")
    cmd, env = launch_command(nproc, train_args, accelerate_config, nodes=nodes)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    tail: list[str] = []
    for line in proc.stderr:
        sys.stderr.write(line)
        tail = (tail + [line])[-400:]
    code = proc.wait()
    if code != 0:
        print(failure_sentence("".join(tail), code), file=sys.stderr)
    return code


DIST_TIMEOUT_S = int(os.environ.get("PHINETUNE_DIST_TIMEOUT", "600"))  # a collective waits at most this long


def record_for_launcher(message: str) -> None:
    """Inside a launched rank, hand the sentence a rank stopped with to torchrun (its error file, the file
    `@record` would write): torchrun's report then carries it, and failure_sentence reads it there.
    Console output cannot be relied on for this: it is wrapped, interleaved between ranks and unprefixed."""
    import json
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")  # set by torchrun for each worker
    if not path:
        return
    one_line = " ".join(message.split())
    try:
        Path(path).write_text(
            json.dumps({"message": {"message": one_line, "extraInfo": {"timestamp": str(int(time.time()))}}})
        )
    except OSError:
        pass  # the exit code still tells the launcher that this rank failed


def failures(report: str) -> list[tuple[int, int, str]]:
    """(rank, exit code, message) of each failed rank in torchrun's report, the root cause first."""
    import re

    blocks = report.split("Root Cause (first observed failure)")
    if len(blocks) < 2:
        return []
    ordered = [blocks[-1].split("=" * 20)[0], *blocks[-2].split("Failures:")[-1:]]
    found = []
    for block in ordered:
        for rank, code, message in re.findall(
            r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+).*?traceback\s*:\s*([^\n]*)", block, re.S
        ):
            found.append((int(rank), int(code), message.strip()))
    return found


def failure_sentence(stderr: str, code: int) -> str:
    """torchrun's 'Root Cause (first observed failure)' block, in one sentence.

    A rank that stopped with one of our sentences (PhinetuneError) left it in torchrun's report
    (record_for_launcher); one that died of an uncaught exception shows it on stderr as `[rankN]: XError: ...`
    (torch's distributed excepthook); one that was killed shows the signal."""
    import re
    import signal as signals

    found = failures(stderr)
    if not found:
        return f"training failed: the launcher exited with code {code}; the same command resumes from the latest checkpoint"
    r, ec, message = found[0]
    errors = re.findall(r"^\[rank(\d+)\]:\s*(\w+(?:Error|Exception|Stopped)\w*:.*)$", stderr, re.M)
    ours = {rank: msg for rank, _, msg in found if msg and not msg.startswith(("To enable traceback", "Signal "))}
    resume = "Run the same command again to resume from the latest checkpoint"
    if ec < 0:
        return f"training failed: rank {r} was killed by {signals.Signals(-ec).name}; the launcher stopped the other ranks. {resume}"
    if (
        r in ours and len(ours) > 1 and len(set(ours.values())) == 1
    ):  # every rank stopped with the same sentence: a joint decision
        return f"training failed: {ours[r].rstrip('.')} (every rank stopped at once). {resume}"
    own = [msg for who, msg in errors if int(who) == r]
    if own and re.search(r"Timed out waiting|timed out|Timeout", own[-1]):  # gloo / NCCL: a peer never answered
        others = ", ".join(str(rank) for rank, _, _ in found[1:]) or "another rank"
        waited = re.search(r"(\d+)\s*ms", own[-1])  # the rank's own timeout (its environment may differ from ours)
        seconds = int(waited.group(1)) // 1000 if waited else DIST_TIMEOUT_S
        return (
            f"training failed: rank {r} waited {seconds} s (PHINETUNE_DIST_TIMEOUT) in a collective for the other "
            f"ranks ({others}) and gave up: one of them is stuck or far slower; the launcher stopped them. {resume}"
        )
    cause = (
        f"failed: {ours[r]}"
        if r in ours
        else f"failed with {own[-1].strip()[:300]}"
        if own
        else f"exited with code {ec}"
    )
    return f"training failed: rank {r} {cause.rstrip('.')}; the launcher stopped the other ranks. {resume}"


def check_distributed(accelerator, cfg) -> None:
    """Settings phinetune's loop does not support under a given engine, refused before any step."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind == "DEEPSPEED" and cfg.train.grad_accum > 1:
        raise PhinetuneError(
            f"DeepSpeed steps its engine on every backward, so train.grad_accum={cfg.train.grad_accum} would "
            "silently step each micro-batch; use train.grad_accum=1 and a larger train.batch_size"
        )
    if kind == "FSDP" and cfg.model.quant == "nf4" and cfg.model.dtype not in ("bf16", "fp16"):
        raise PhinetuneError(
            "QLoRA + FSDP needs model.dtype=bf16 (or fp16): the 4-bit weights are stored in that dtype to be sharded"
        )


def configure_engine(accelerator, cfg) -> None:
    """What DeepSpeed must be told before `accelerator.prepare`: our loop collates its own micro-batches and hands
    accelerate no dataloader, so accelerate cannot read the micro-batch size off one (it refuses to prepare)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
        plugin.deepspeed_config["train_batch_size"] = (
            cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
        )


def deepspeed_on_cpu() -> bool:
    """A DeepSpeed launch (accelerate sets ACCELERATE_USE_DEEPSPEED) on a machine without CUDA: DeepSpeed's CPU accelerator over gloo."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not torch.cuda.is_available()


def process_group_backend() -> dict:
    """accelerate's backend for DeepSpeed on CPU. accelerate picks a backend only for GPU-like devices or under
    ACCELERATE_USE_CPU, and under ACCELERATE_USE_CPU it never selects DeepSpeed; without either it lets DeepSpeed
    start gloo itself but then counts one process per rank (every rank its own main process, the same batches).
    Naming gloo makes it count the real world size and rank while DeepSpeed still drives the engine."""
    return {"backend": "gloo"} if deepspeed_on_cpu() else {}
