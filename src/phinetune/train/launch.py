"""`phinetune train --nproc N`: re-run the same command under a multi-process launcher.

No distributed engine of our own: on GPUs the launcher is `accelerate launch` (which reads an accelerate
config for DDP, FSDP or DeepSpeed: configs/accelerate/*.yaml); on CPU it is torch.distributed.run with
ACCELERATE_USE_CPU=true, because `accelerate launch --cpu` runs one process unless mpirun is set up, while
torchrun + that flag gives accelerate's MULTI_CPU mode over gloo. An FSDP version-2 config on CPU runs
PyTorch's fully_shard over gloo (train/sharding.py: accelerate does not select FSDP on CPU); the other
configs (FSDP1, QLoRA + FSDP, DeepSpeed) need GPUs and are refused on CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from phinetune.errors import PhinetuneError
from phinetune.train.sharding import ENV as SHARDING_ENV


def launch_command(nproc: int, train_args: list[str], accelerate_config: Optional[Path] = None,
                   use_gpu: Optional[bool] = None) -> tuple[list[str], dict]:
    """The command and environment that run `phinetune train TRAIN_ARGS` on `nproc` processes."""
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    env = {**os.environ, "PHINETUNE_LAUNCHED": "1"}
    target = ["-m", "phinetune", "train", *train_args]
    if accelerate_config is not None and not accelerate_config.exists():
        raise PhinetuneError(f"--accelerate-config {accelerate_config} does not exist; see configs/accelerate/ for DDP, FSDP and DeepSpeed configs")
    if use_gpu:
        config = ["--config_file", str(accelerate_config)] if accelerate_config else ["--multi_gpu"]
        return [sys.executable, "-m", "accelerate.commands.launch", *config, "--num_processes", str(nproc), *target], env
    if accelerate_config is not None:
        if not is_fsdp2(accelerate_config):
            raise PhinetuneError(f"--accelerate-config {accelerate_config} needs GPUs (on CPU only an FSDP config with fsdp_version: 2 "
                                 "runs, e.g. configs/accelerate/fsdp.yaml); drop it to train with DDP over gloo on CPU")
        env[SHARDING_ENV] = "1"
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", *target], env


def is_fsdp2(path: Path) -> bool:
    """An accelerate config asking for FSDP version 2 (and nothing CPU cannot do: no 4-bit base)."""
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    fsdp = config.get("fsdp_config") or {}
    return config.get("distributed_type") == "FSDP" and int(fsdp.get("fsdp_version", 1)) == 2


def launch(nproc: int, train_args: list[str], accelerate_config: Optional[Path] = None) -> int:
    """Run the launcher, passing its output through; when a rank fails, end with one sentence naming it.

    Bounded time: torchrun (and accelerate launch, which runs it) stops every other worker as soon as one
    exits non-zero or is killed, so no rank waits in a collective for a peer that is gone; a rank that is
    alive but stuck is ended by the process-group timeout (DIST_TIMEOUT_S, set in train/recipe.py)."""
    if os.environ.get("PHINETUNE_LAUNCHED") == "1":
        raise PhinetuneError("--nproc given inside a launched process; pass it once, to the outer `phinetune train`")
    cmd, env = launch_command(nproc, train_args, accelerate_config)
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
        Path(path).write_text(json.dumps({"message": {"message": one_line, "extraInfo": {"timestamp": str(int(time.time()))}}}))
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
        for rank, code, message in re.findall(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+).*?traceback\s*:\s*([^\n]*)", block, re.S):
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
    if r in ours and len(ours) > 1 and len(set(ours.values())) == 1:  # every rank stopped with the same sentence: a joint decision
        return f"training failed: {ours[r].rstrip('.')} (every rank stopped at once). {resume}"
    own = [msg for who, msg in errors if int(who) == r]
    if own and re.search(r"Timed out waiting|timed out|Timeout", own[-1]):  # gloo / NCCL: a peer never answered
        others = ", ".join(str(rank) for rank, _, _ in found[1:]) or "another rank"
        waited = re.search(r"(\d+)\s*ms", own[-1])  # the rank's own timeout (its environment may differ from ours)
        seconds = int(waited.group(1)) // 1000 if waited else DIST_TIMEOUT_S
        return (f"training failed: rank {r} waited {seconds} s (PHINETUNE_DIST_TIMEOUT) in a collective for the other "
                f"ranks ({others}) and gave up: one of them is stuck or far slower; the launcher stopped them. {resume}")
    cause = f"failed: {ours[r]}" if r in ours else f"failed with {own[-1].strip()[:300]}" if own else f"exited with code {ec}"
    return f"training failed: rank {r} {cause.rstrip('.')}; the launcher stopped the other ranks. {resume}"


def check_distributed(accelerator, cfg) -> None:
    """Settings phinetune's loop does not support under a given engine, refused before any step."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind == "DEEPSPEED" and cfg.train.grad_accum > 1:
        raise PhinetuneError(f"DeepSpeed steps its engine on every backward, so train.grad_accum={cfg.train.grad_accum} would "
                             "silently step each micro-batch; use train.grad_accum=1 and a larger train.batch_size")
    if kind == "FSDP" and cfg.model.quant == "nf4" and cfg.model.dtype not in ("bf16", "fp16"):
        raise PhinetuneError("QLoRA + FSDP needs model.dtype=bf16 (or fp16): the 4-bit weights are stored in that dtype to be sharded")
