"""The machine a benchmark ran on, and its load, so every printed figure names both.

Ratios between two sides mean something only when the load did not change between them: `LoadWindow`
records `os.getloadavg()` (what `uptime` prints) at the start and end of a measurement, and `steady` says
whether the 1-minute load moved by more than `MAX_LOAD_CHANGE` (a benchmark must not print a ratio as met when
it did not hold).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_LOAD_CHANGE = 0.75  # 1-minute load average, in runnable processes: about one busy core on a 2-core machine


def machine() -> dict:
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def proc_status(field: str) -> int:
    """Bytes of a memory field of /proc/self/status (VmRSS now, VmHWM: the peak since the last reset); Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the kernel's RSS high-water mark (VmHWM) at the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


@dataclass
class LoadWindow:
    """`uptime`'s load averages at the start and end of a measurement."""

    start: tuple[float, float, float] = field(default_factory=lambda: load_average())
    end: tuple[float, float, float] | None = None

    def close(self) -> LoadWindow:
        self.end = load_average()
        return self

    @property
    def steady(self) -> bool:
        return self.end is not None and abs(self.end[0] - self.start[0]) <= MAX_LOAD_CHANGE

    def describe(self) -> str:
        end = "still running" if self.end is None else f"{self.end[0]:.2f} {self.end[1]:.2f} {self.end[2]:.2f}"
        return f"load average at start {self.start[0]:.2f} {self.start[1]:.2f} {self.start[2]:.2f}, at end {end}"

    def to_json(self) -> dict:
        return {**asdict(self), "steady": self.steady}


MAX_OTHERS_CHANGE = 0.5  # cores: how much more (or less) CPU other processes may take between two sides compared


def clock() -> float:
    return time.perf_counter()


def busy_seconds() -> float | None:
    """CPU seconds all processes have run since boot (/proc/stat's busy jiffies), None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class OthersShare:
    """How many cores OTHER processes kept busy during a measurement: all busy CPU time minus our own (and our
    waited-for children's), over the wall time. Why beside `LoadWindow`: the 1-minute load average counts the
    benchmark's own threads and lags by about a minute, so it climbs during every side even on an idle machine;
    the CPU time others took is what slows a side down, and it is measured, not inferred."""

    busy: float | None = field(default_factory=lambda: busy_seconds())  # through the module functions (patchable)
    own: float = field(default_factory=lambda: own_seconds())
    wall: float = field(default_factory=lambda: clock())
    cores: float | None = None

    def close(self) -> OthersShare:
        busy, elapsed = busy_seconds(), clock() - self.wall
        if busy is not None and self.busy is not None and elapsed > 0:
            self.cores = max(0.0, (busy - self.busy) - (own_seconds() - self.own)) / elapsed
        return self
