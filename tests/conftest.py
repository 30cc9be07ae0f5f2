"""Shared fixtures: hermetic (offline), tiny models, this checkout's own sources first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# ../shared beside the checkout (the development workspace only); PHINETUNE_REALDATA points elsewhere (a worktree)
SHARED = Path(os.environ.get("PHINETUNE_REALDATA") or ROOT.parent / "shared" / "realdata")
sys.path.insert(0, str(SRC))  # a git worktree tests its own code, not the editable install's

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PHINETUNE_QUIET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def realdata(*parts: str) -> Path:
    """A file under ../shared/realdata, or skip the test cleanly where it is absent (a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (only in the development workspace)")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `phinetune ...` in a subprocess with this checkout's sources, offline."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "PHINETUNE_QUIET": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "phinetune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"phinetune {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# The tiny LoRA run most tests train (4 steps on 24 riddles); a test changes it by appending overrides (the last wins).
TINY_OVERRIDES = ["model.name=tiny-phi3", "data.train=builtin:riddles", "data.eval_size=4", "data.limit=24",
                  "train.max_steps=4", "train.batch_size=4", "train.eval_every=2", "train.log_every=1",
                  "train.learning_rate=3e-3", "adapter.modules_to_save=[embed_tokens,lm_head]"]


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
            cfg = load_config(None, [f"model.name={name}", "data.train=builtin:riddles", "data.eval_size=2", "data.limit=8",
                                     "data.max_length=192", "train.max_steps=60", "train.batch_size=4", "train.eval_every=1000",
                                     "train.log_every=10", "train.learning_rate=1e-2", "adapter.dropout=0",
                                     "adapter.modules_to_save=[embed_tokens,lm_head]", f"output.dir={out}"])
            runs[name] = train(cfg).run.path
        return runs[name]

    return make
