"""Shared fixtures: hermetic (offline), tiny models, this checkout's own sources first on the path."""

from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# ../shared beside the checkout (the development workspace only); PHINETUNE_REALDATA points elsewhere (a worktree)
SHARED = Path(os.environ.get("PHINETUNE_REALDATA") or ROOT.parent / "shared" / "realdata")
# The real tokenizers, chat template, configs and small data sets, shipped (scripts/pack_realdata_fixtures.py)
SHIPPED_REALDATA = ROOT / "tests" / "fixtures" / "realdata.tar.xz"
sys.path.insert(0, str(SRC))  # a git worktree tests its own code, not the editable install's

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PHINETUNE_QUIET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The console width every command sees, in-process too: rich fixes a console's width when it is created if
# COLUMNS is set, and pytest-xdist's workers start with COLUMNS=80 (tables would squeeze their headers).
os.environ["COLUMNS"] = "200"
from phinetune.progress import no_hub_kernels  # noqa: E402  (this checkout's, after the path above)

no_hub_kernels()  # as cli.main() does: in-process tests import peft (hence bitsandbytes) and load models too
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per process it starts): two workers share two cores, and a second OpenMP
    # thread per process only spins waiting for the other worker's cores. Read by torch when it is imported.
    os.environ["OMP_NUM_THREADS"] = "1"


# No time limit per example and no "too slow" health check in any property test (a test's own @settings keeps
# these unless it sets them): both are wall-clock bounds, which a loaded machine breaks without a bug.
settings.register_profile("phinetune", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("phinetune")


@functools.cache
def shipped_realdata() -> Path:
    """tests/fixtures/realdata.tar.xz unpacked into a temporary folder, once per test process."""
    folder = Path(tempfile.mkdtemp(prefix="phinetune-realdata-"))
    atexit.register(shutil.rmtree, folder, True)
    with tarfile.open(SHIPPED_REALDATA) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return folder


def realdata(*parts: str) -> Path:
    """A real public file by its path under realdata/: shipped with the tests (the Phi tokenizers, the Phi-3.5 chat
    template, configs and small data sets), or one of the large eval sets in ../shared/realdata, which only the
    development workspace has: a test that needs one skips cleanly without it."""
    shipped = shipped_realdata().joinpath(*parts)
    if shipped.exists():
        return shipped
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"needs realdata/{'/'.join(parts)}, a large data set not shipped with the tests "
            f"(the development workspace has it in ../shared/realdata, or set PHINETUNE_REALDATA)"
        )
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `phinetune ...` in a subprocess with this checkout's sources, offline."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "PHINETUNE_QUIET": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "phinetune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"phinetune {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def cli_here(
    *args: str, env: dict | None = None, cwd: Path | None = None, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess:
    """`phinetune ...` like run_cli, but through `cli.main()` (the console script's own function) in this process.

    The same argument parsing, error sentences and exit codes, without a fresh interpreter importing torch and
    transformers again (seconds per command): for tests that are not about the process boundary. Output is
    collected at the file-descriptor level, so what the processes a command starts print (the ranks of
    `train --nproc 2`) is in stdout/stderr too. `env` replaces the whole environment (default: this one plus
    run_cli's variables, PYTHONPATH included, so launched processes import this checkout); the environment,
    working folder, argv and stdin are restored afterwards. An exception main() lets out comes back as its
    traceback on stderr with exit code 1, as a process would end. Not for commands that fork (bench infer):
    a fork of a process whose torch thread pool has run can hang in that pool."""
    from phinetune import cli

    env = (
        env
        if env is not None
        else {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "PHINETUNE_QUIET": "1", "COLUMNS": "200"}
    )
    saved_env, saved_cwd, saved_argv, saved_streams = (
        dict(os.environ),
        os.getcwd(),
        sys.argv,
        (sys.stdin, sys.stdout, sys.stderr),
    )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in saved_streams[1:]:
            stream.flush()
        saved_fds = os.dup(1), os.dup(2)
        try:
            os.environ.clear()
            os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            sys.argv, sys.stdin = ["phinetune", *args], io.StringIO(stdin)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except Exception:  # what a process would die of: its traceback is the evidence
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            sys.argv = saved_argv
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        texts = []
        for file in (out, err):
            file.seek(0)
            texts.append(file.read().decode("utf-8", errors="replace"))
    if check and code != 0:
        raise AssertionError(f"phinetune {' '.join(args)} failed ({code}):\n{texts[0][-3000:]}\n{texts[1][-3000:]}")
    return subprocess.CompletedProcess(["phinetune", *args], code, *texts)


# The tiny LoRA run most tests train (4 steps on 24 riddles); a test changes it by appending overrides (the last wins).
TINY_OVERRIDES = [
    "model.name=tiny-phi3",
    "data.train=builtin:riddles",
    "data.eval_size=4",
    "data.limit=24",
    "train.max_steps=4",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.log_every=1",
    "train.learning_rate=3e-3",
    "adapter.modules_to_save=[embed_tokens,lm_head]",
]


@pytest.fixture(scope="session")
def tiny_phi3():
    from phinetune.models.tiny import build_tiny

    return build_tiny("tiny-phi3")


@pytest.fixture
def tiny_cfg(tmp_path):
    """A fast config on the tiny Phi-3 and the bundled riddles, writing into tmp_path."""
    from phinetune.config import load_config

    def make(*overrides: str):
        return load_config(None, TINY_OVERRIDES + [f"output.dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A LoRA run of the tiny Phi-3 (4 steps), trained once per session and shared by the inference tests.

    Also points PHINETUNE_CACHE (where tiny base models named by id are built) into the session's temp folder.
    """
    from phinetune.config import load_config
    from phinetune.train.recipe import train

    os.environ.setdefault("PHINETUNE_CACHE", str(tmp_path_factory.mktemp("phinetune-cache")))
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    return train(load_config(None, TINY_OVERRIDES + [f"output.dir={out}"])).run.path


@pytest.fixture(scope="session")
def memorized_run(tmp_path_factory):
    """`memorized_run("tiny-phi3")`: a LoRA run trained until it answers its six riddles from memory.

    For tests that need a trained answer to come back and generation to stop at the end-of-turn token
    (the 4-step `tiny_run` never emits it). Built once per model name per session.
    """
    from phinetune.config import load_config
    from phinetune.train.recipe import train

    os.environ.setdefault("PHINETUNE_CACHE", str(tmp_path_factory.mktemp("phinetune-cache")))
    runs: dict[str, Path] = {}

    def make(name: str = "tiny-phi3") -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"memorized-{name}") / name
            cfg = load_config(
                None,
                [
                    f"model.name={name}",
                    "data.train=builtin:riddles",
                    "data.eval_size=2",
                    "data.limit=8",
                    "data.max_length=192",
                    "train.max_steps=60",
                    "train.batch_size=4",
                    "train.eval_every=1000",
                    "train.log_every=10",
                    "train.learning_rate=1e-2",
                    "adapter.dropout=0",
                    "adapter.modules_to_save=[embed_tokens,lm_head]",
                    f"output.dir={out}",
                ],
            )
            runs[name] = train(cfg).run.path
        return runs[name]

    return make


@pytest.fixture(scope="session")
def checkpointed_run(tmp_path_factory):
    """The tiny LoRA run of `tiny_run` with checkpoints at steps 2 and 4 kept (train.save_every=2), trained once per
    session: the run whose folders (adapter/, checkpoints/step-N) and damaged copies the wrong-folder tests pass around."""
    from phinetune.config import load_config
    from phinetune.train.recipe import train

    os.environ.setdefault("PHINETUNE_CACHE", str(tmp_path_factory.mktemp("phinetune-cache")))
    out = tmp_path_factory.mktemp("checkpointed-run") / "run"
    return train(load_config(None, TINY_OVERRIDES + ["train.save_every=2", f"output.dir={out}"])).run.path


def linked_copy(run: Path, dest: Path) -> Path:
    """A copy of a run folder made of hard links (instant, no disk): delete files in it freely, but replace a file
    (unlink, then write) rather than write into it, which would change the original too."""
    import shutil

    shutil.copytree(run, dest, copy_function=os.link)
    return dest


HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from phinetune.runs.run_dir import RunDir
from phinetune.runs.status import hold_run
lock = hold_run(RunDir({path!r}))
print("held", flush=True)
time.sleep(600)
"""


def hold_in_subprocess(run_path: Path) -> subprocess.Popen:
    """A process that holds a run folder as its training process does (runs/status.hold_run) until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(src=str(SRC), path=str(run_path))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc
