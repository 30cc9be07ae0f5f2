"""PHINETUNE_INJECT_FAULT (train/faults.py): only the named rank, only at the named step, and nothing when unset."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import SRC
from phinetune.train.faults import ENV, injected


def test_nothing_happens_unless_asked(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert all(injected(step, rank) is None for step in range(5) for rank in range(3))


def test_only_the_named_rank_at_the_named_step(monkeypatch):
    monkeypatch.setenv(ENV, "nan:1:3")
    assert injected(2, 1) == "nan"  # step 3 is the 0-based step 2
    assert injected(2, 0) is None and injected(1, 1) is None and injected(3, 1) is None
    monkeypatch.setenv(ENV, "oom:0:1")
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        injected(0, 0)
    assert injected(0, 1) is None


def test_kill_is_a_real_sigkill():
    code = (
        f"import sys; sys.path.insert(0, {str(SRC)!r}); import os; os.environ[{ENV!r}] = 'kill:0:2'\n"
        "from phinetune.train.faults import injected; injected(0, 0); print('alive'); injected(1, 0); print('not reached')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and proc.stdout.split() == ["alive"]
