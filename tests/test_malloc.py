"""kernels/malloc.py: a fixed mmap threshold. Freed blocks above it go back to the OS at once; blocks below it stay
in the heap for the next tensor. The control runs the same probe under glibc's own threshold, which moves and never
passes 32 MiB: there a 40 MiB block is always a mapping of its own."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import SRC

PROBE = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {src!r})
    from phinetune.kernels.malloc import MAX_THRESHOLD, pin_malloc_thresholds
    if {pin}:
        assert pin_malloc_thresholds(MAX_THRESHOLD)
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    def released(mib):
        blocks = [torch.ones(mib * 2**20 // 4) for _ in range(6)]  # written, so resident
        before = rss()
        del blocks[::2]  # every other block: holes between live ones, never at the top of the heap
        return (before - rss()) / 2**20
    print(released({mib}))
""")


def released_mib(pin: bool) -> tuple[float, float]:
    """MiB returned to the OS when 3 of 6 blocks of 40 MiB, then (in a fresh process) of 56 MiB, are freed.

    A fresh process per size: freed 40 MiB blocks coalesce into a free region of the heap that a later 56 MiB
    request is served from (malloc searches its free lists before it maps), so in one process the second probe
    measured the first one's leftovers, not the threshold."""
    return _released(pin, 40), _released(pin, 56)


def _released(pin: bool, mib: int) -> float:
    # One arena, one thread: under contention glibc may serve a block from a thread arena, whose per-block heap is
    # unmapped whole when freed whatever the threshold.
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(src=str(SRC), pin=pin, mib=mib)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_the_threshold_splits_reused_from_returned_memory():
    from phinetune.kernels.malloc import MAX_THRESHOLD

    assert 40 * 2**20 < MAX_THRESHOLD < 56 * 2**20  # the probe's two sizes sit on either side of it
    below, above = released_mib(pin=True)
    assert below < 20, below  # 3 x 40 MiB freed between live blocks: kept by the heap for reuse
    assert above >= 3 * 56 * 0.95, above  # 3 x 56 MiB freed: unmapped at once
    control_below = _released(False, 40)
    assert control_below >= 3 * 40 * 0.95, control_below  # glibc's own: 40 MiB blocks are mappings, returned


def test_the_threshold_is_one_fp32_hidden_state_of_the_micro_batch_within_bounds():
    from phinetune.kernels.malloc import MAX_THRESHOLD, MIN_THRESHOLD, threshold_for

    assert threshold_for(8 * 512, 3072) == 8 * 512 * 3072 * 4 == MAX_THRESHOLD  # bench train's CPU reference
    assert threshold_for(2048, 256) == 2 * 2**20  # the tiny sweep width
    assert threshold_for(4, 64) == MIN_THRESHOLD and threshold_for(8 * 4096, 5120) == MAX_THRESHOLD
