"""Pin glibc's mmap threshold during training (glibc only): a fixed line between reused and returned memory.

Why by hand: glibc moves its mmap threshold as blocks are freed (from 128 KiB up to 32 MiB), so where a
tensor's memory comes from, and whether freeing it gives it back, drifts with the allocation history. A
fixed threshold turns that off: a block below it comes from the heap and is reused without new pages; a block
above it is its own mapping, unmapped as soon as it is freed, and paid again in page faults (the kernel
zeroes every page) each time a tensor of that size is allocated.

The value is a trade measured on `bench train`'s CPU reference workload (8 x 512 tokens, hidden 3072,
intermediate 8192; idle 2-core machine, phinetune side only, one run each, 2026-12-01; runs of one setting
differ by up to 5%):

    threshold          tokens/s   peak RSS
    128 KiB               638.8   2.21 GiB   (every tensor a fresh mapping)
    glibc's own           706.1   2.48 GiB
    32 MiB         689.4, 721.0   2.45, 2.56 GiB
    48 MiB         742.2, 755.1   2.54, 2.52 GiB
    ~67 MiB               745.6   2.80 GiB   (the 64 MiB MLP intermediates reuse the heap too)
    160 MiB               787.3   2.77 GiB

48 MiB keeps the peak under half of TRL tuned's (5.4 GiB) with most of the speed. That is one fp32 hidden
state of the micro-batch (8 x 512 x 3072 x 4 bytes), the rule `threshold_for` applies to every run, capped at
48 MiB: a fixed 48 MiB on small models puts every activation on the heap, whose holes then stay resident
(`bench train --sweep --width tiny`, 2 layers, checkpointing on: 33% above plan at 48 MiB, within 15% at
1-2 MiB). (Before the loss reused its chunk buffers, glibc's own setting kept ~0.9 GB of freed activations
resident: 3.20 GiB against 2.54.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MIN_THRESHOLD, MAX_THRESHOLD = 128 * 1024, 48 * 2**20


def threshold_for(tokens: int, hidden: int) -> int:
    """The threshold for a micro-batch of `tokens` tokens through a model of width `hidden` (see above)."""
    return min(MAX_THRESHOLD, max(MIN_THRESHOLD, tokens * hidden * 4))


def pin_malloc_thresholds(threshold: int) -> bool:
    """Pin glibc's mmap and trim thresholds; False where there is no glibc (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
