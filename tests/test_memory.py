"""Freed activation memory goes back to the OS: holes between live tensors must not stay resident."""

import subprocess
import sys
import textwrap

import pytest

from conftest import SRC

PROBE = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {src!r})
    from phinetune.train.memory import pin_malloc_thresholds
    if {pin}:
        assert pin_malloc_thresholds()
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    big = torch.ones(16 * 2**20 // 4)  # freeing a mapped block (<= 32 MiB) raises glibc's threshold to its size
    del big
    blocks = [torch.ones(8 * 2**20 // 4) for _ in range(20)]  # 20 x 8 MiB, written so they are resident
    before = rss()
    del blocks[::2]  # free every other block: holes between live ones, never at the top of the heap
    print((before - rss()) / 2**20)
""")


def _released_mib(pin: bool) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE.format(src=str(SRC), pin=pin)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_tensors_are_returned_to_the_os():
    assert _released_mib(pin=True) >= 70  # 10 x 8 MiB freed, unmapped at once
    assert _released_mib(pin=False) < 40  # control: glibc keeps them, which is the behaviour being fixed
