"""Is a run training, finished, interrupted or damaged? One answer for every reader (generate, export, the report,
a list of runs), and the lock that makes "running" checkable.

run.json records what the training process last wrote; a process killed with SIGKILL (or a machine that lost
power) writes nothing more, so its run.json says "running" for ever. What tells a live run from a dead one is
RUN/train.lock: the training process holds an exclusive flock(2) on it while it trains (`hold_run`). The kernel
drops the lock when the process ends, however it ends, so a reader that can take the lock knows no process is
training the run. Why flock and not a pid file: a pid can be reused, and a pid means nothing on another machine;
a lock on the run folder's own file is checked where the folder is (flock over NFS is mapped to POSIX locks by
Linux, so the node training and a login node reading agree). The lock file also records pid, host and start time,
to name the holder. Only the main process (global rank 0) holds it: the other ranks of a multi-process run live
and die with it under torchrun.

    run_status(run)            RunStatus(state, text): running | finished | interrupted | failed | damaged
    final_weights_problem(run) why the final weights cannot be loaded (unfinished, or a file missing), or None
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.models.hub import snapshot_repo
from phinetune.runs.run_dir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINT_WEIGHTS, RunDir

try:
    import fcntl
except ImportError:  # not POSIX: the recorded pid is all there is to check
    fcntl = None

# What a fast tokenizer's save_pretrained writes into RUN/tokenizer and loading it needs (its chat template, if
# deleted, comes back from the spec: models/loading.load_tokenizer).
RUN_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
TAKE_LOCK_S = 2.0  # a reader testing the lock holds it for microseconds: the trainer retries this long


@dataclass(frozen=True)
class RunStatus:
    state: str  # running, finished, interrupted, failed, damaged (run.json missing or unreadable)
    text: str  # for people: "interrupted at step 4", "running (pid 12 on node1 since 10:02)", what run.json says


class RunLock:
    """The training process's hold on RUN/train.lock (see the module docstring); `release` at the end."""

    def __init__(self, run: RunDir):
        self.fd: int | None = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + TAKE_LOCK_S
        while not _try_lock(self.fd):
            if time.monotonic() > deadline:
                recorded = _read_holder(self.fd)
                os.close(self.fd)
                raise PhinetuneError(
                    f"another process is training in {run.path} ({holder_text(recorded)}); wait for it to end "
                    "or choose another output.dir"
                )
            time.sleep(0.02)
        os.ftruncate(self.fd, 0)
        os.write(
            self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
        )

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def hold_run(run: RunDir) -> RunLock:
    return RunLock(run)


def holder(run: RunDir) -> dict | None:
    """Who is training `run` now ({"pid", "host", "started"}, possibly {} while it starts), or None: nobody."""
    try:
        fd = os.open(run.lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            except BlockingIOError:
                return _read_holder(fd)
            except OSError:  # a file system without locks: the recorded pid below
                pass
        recorded = _read_holder(fd)
        return recorded if _pid_alive(recorded) else None
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock: False while another process holds it. Where the file system has no locks (or the
    platform no flock), go on without one: readers then check the pid this process records."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(recorded: dict) -> bool:
    """Without flock: the recorded pid, on this host only (elsewhere it cannot be checked: assume it lives)."""
    if not recorded.get("pid"):
        return False
    if recorded.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(recorded["pid"]), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def holder_text(recorded: dict | None) -> str:
    if not recorded or not recorded.get("pid"):
        return "a process is starting"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(recorded["started"])) if recorded.get("started") else "?"
    return f"pid {recorded['pid']} on {recorded.get('host', '?')}, since {since}"


def run_status(run: RunDir) -> RunStatus:
    """What run.json says, corrected by the lock: "running" with nobody holding the lock is an interrupted run."""
    try:
        recorded = run.read_info().status
    except PhinetuneError as exc:
        return RunStatus("damaged", str(exc))
    if recorded == "finished":
        return RunStatus("finished", recorded)
    if recorded == "running":
        live = holder(run)
        if live is not None:
            return RunStatus("running", f"running: {holder_text(live)}")
        last = run.checkpoint_dirs()
        after = f" after checkpoint {last[-1][1].name}" if last else " before its first checkpoint"
        return RunStatus(
            "interrupted",
            f"interrupted{after}: no process holds the run, though run.json still says running, "
            "so its training process was killed",
        )
    for state in ("interrupted", "failed"):
        if recorded.startswith(state):
            return RunStatus(state, recorded)
    return RunStatus("failed", recorded)


def local_base(base_model: str) -> bool:
    """A base that only this machine holds: an absolute folder that is not a Hub cache snapshot (which its id fetches again)."""
    return Path(base_model).is_absolute() and snapshot_repo(base_model) is None


def missing_files(run: RunDir) -> list[Path]:
    """Files the run's final weights need that are not there (an empty list: nothing missing).

    A run that saved no final weights yet is not damaged (runs/checkpoints.pick_checkpoint says it is unfinished);
    one whose run.json says finished, or whose adapter/ or model/ exists, must hold all of them."""
    needed = [run.info_file, run.config, run.tokenizer, *(run.tokenizer / name for name in RUN_TOKENIZER_FILES)]
    try:
        info = run.read_info()
    except PhinetuneError:
        return [p for p in needed if not p.exists()]
    if info.method == "full" or run.full_model.exists():
        weights = [run.full_model, run.full_model / "config.json"]
        if run.full_model.is_dir() and not any(run.full_model.glob("*.safetensors")):
            weights.append(run.full_model / "model.safetensors")
    else:
        weights = [run.adapter, run.adapter / ADAPTER_CONFIG, run.adapter / ADAPTER_WEIGHTS]
    if info.status == "finished" or weights[0].exists():
        needed += weights
    if local_base(info.base_model) and not run.full_model.exists():
        needed.append(Path(info.base_model))  # a local base (a built-in tiny model is built into RUN/base)
    missing = [p for p in needed if not p.exists()]
    return [p for p in missing if p.parent not in missing]  # adapter/ itself, not each file it held


def checkpoint_missing(run: RunDir, checkpoint: Path) -> list[Path]:
    """What loading the model at `checkpoint` needs that is not there (its weights, the run's tokenizer and base)."""
    needed = [
        checkpoint / CHECKPOINT_WEIGHTS,
        run.config,
        run.tokenizer,
        *(run.tokenizer / name for name in RUN_TOKENIZER_FILES),
    ]
    try:
        base = run.read_info().base_model
    except PhinetuneError:
        return [p for p in needed if not p.exists()] + [run.info_file]
    if local_base(base):
        needed.append(Path(base))
    return [p for p in needed if not p.exists()]


LOAD_OFFER = "pass --checkpoint last to use its last checkpoint ({name})"  # generate, chat, serve, merge, export
NO_SAMPLES = "pass --samples 0 to write the report without sample answers"  # a report needs final weights only for them
ANY_OFFER = "its last checkpoint ({name}) is intact: generate, chat, merge and export take it with --checkpoint last"


def final_weights_problem(
    run: RunDir, use_checkpoint: str | None = LOAD_OFFER, instead: str | None = None
) -> str | None:
    """None when the run's final weights can be loaded; else one sentence: unfinished (interrupted, failed, killed,
    still training) or damaged (naming the missing file), and what works instead.

    `use_checkpoint`: how the calling command takes the last complete checkpoint, formatted with its name, offered
    when there is one (None: the commands that do); `instead`: what the calling command can do without final
    weights at all (report --samples 0), offered in place of either."""
    missing, status = missing_files(run), run_status(run)
    if not missing and status.state == "finished":
        return None  # only a finished run's weights are trusted: a process killed inside their save leaves them cut
    usable = [p for _, p in run.checkpoint_dirs() if not checkpoint_missing(run, p)]
    if instead:
        offer = instead
    elif usable:
        offer = (use_checkpoint or ANY_OFFER).format(name=usable[-1].name)
    elif status.state in ("finished", "damaged"):
        offer = "it kept no checkpoint to use instead; train it again with output.overwrite=true"
    elif status.state == "running":
        offer = "it has saved no checkpoint yet; wait for it to finish"
    else:
        offer = "it saved no checkpoint to use; re-run its `phinetune train` command to train it"
    if status.state == "running":  # its final save may be under way: nothing is damaged yet
        return f"{run.path} is still training ({status.text.removeprefix('running: ')}) and has no final weights yet; {offer}"
    weights_dirs = (run.adapter, run.full_model)
    if missing and (status.state in ("finished", "damaged") or any(p.parent in weights_dirs for p in missing)):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"{run.path} is damaged: {missing[0]} is missing{more}; {offer}"
    return f"{run.path} is an unfinished run ({status.text}) with no final weights; {offer}"


def require_final_weights(run: RunDir, use_checkpoint: str | None = LOAD_OFFER, instead: str | None = None) -> None:
    problem = final_weights_problem(run, use_checkpoint, instead)
    if problem:
        raise PhinetuneError(problem)
