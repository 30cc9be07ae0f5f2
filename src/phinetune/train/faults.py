"""Faults injected on purpose, for the tests that prove one failing rank ends the whole job (tests/test_rank_failure.py).

    PHINETUNE_INJECT_FAULT=KIND:RANK:STEP    KIND: nan | oom | kill | hang; RANK: the process index; STEP: 1-based step

nan   that rank's loss of that step becomes NaN (through the graph: its gradients are NaN too)
oom   that rank raises torch.OutOfMemoryError in that step, as an allocator would
kill  that rank sends itself SIGKILL at the start of that step (the kernel's OOM killer, a lost machine)
hang  that rank stops making progress at the start of that step, alive (a deadlock, a stuck device)

Unset, which it always is outside those tests, nothing happens. A real fault cannot be timed to a step and a
rank, and the point is to test what the other ranks and the launcher do about it.
"""

from __future__ import annotations

import os
import signal
import time

import torch

ENV = "PHINETUNE_INJECT_FAULT"
KINDS = ("nan", "oom", "kill", "hang")


def injected(step: int, rank: int) -> str | None:
    """The fault to inject now (0-based `step`), after raising or dying for oom and kill; "nan" is the caller's to apply."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    kind, at_rank, at_step = spec.split(":")
    if kind not in KINDS or int(at_rank) != rank or int(at_step) != step + 1:
        return None
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while kind == "hang":  # signals still run their handlers; only a SIGKILL ends it
        time.sleep(1)
    if kind == "oom":
        raise torch.OutOfMemoryError(f"injected by {ENV}: out of memory")
    return kind
