"""Time left in a training run, estimated from its steady-state steps and the measured cost of its pauses.

A rate taken from the first few steps, or from wall time between progress updates, is wrong both ways: the
first steps after a (re)start are slow (allocator and kernel warm-up, lazy initialisation, compilation),
and evaluations and checkpoint saves stop the step clock at steps known in advance. So the estimate is

    mean time of the last WINDOW optimizer steps (the first WARMUP steps left out) x steps still to run
    + mean measured time of one evaluation x evaluations still due (in the loop, and the final one)
    + mean measured time of one checkpoint save x saves still due

A pause kind not yet measured counts as nothing until it is; the estimate follows a machine whose load
changes within WINDOW steps. It is an estimate and is always shown as one ("~2 min left (estimate)").
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WARMUP = 3  # steps after a (re)start whose time is left out
WINDOW = 20  # recent steady-state steps averaged
MIN_STEPS = 5  # steady-state steps timed before any estimate is given


@dataclass(frozen=True)
class Schedule:
    """What the rest of a run holds: its optimizer steps, and where evaluations and checkpoint saves fall."""

    total: int
    eval_every: int = 0  # 0: no evaluation inside the loop
    save_every: int = 0  # 0: no checkpoint saves
    final_eval: bool = False  # one evaluation after the last step

    def evals_after(self, done: int) -> int:
        """Evaluations still due after `done` steps: the loop's (not at the last step) and the final one."""
        inner = (self.total - 1) // self.eval_every - done // self.eval_every if self.eval_every else 0
        return max(inner, 0) + int(self.final_eval)

    def saves_after(self, done: int) -> int:
        return max(self.total // self.save_every - done // self.save_every, 0) if self.save_every else 0


class Eta:
    def __init__(self, schedule: Schedule, start: int = 0):
        self.schedule, self.start = schedule, start
        self.steps: deque[float] = deque(maxlen=WINDOW)
        self.pauses: dict[str, list[float]] = {"eval": [], "save": []}

    def step(self, done: int, seconds: float) -> None:
        """Step number `done` (1-based) took `seconds`, evaluations and saves not included."""
        if done > self.start + WARMUP:
            self.steps.append(seconds)

    def pause(self, kind: str, seconds: float) -> None:
        """An evaluation ('eval') or a checkpoint save ('save') took `seconds`."""
        self.pauses[kind].append(seconds)

    def ready(self) -> bool:
        return len(self.steps) >= MIN_STEPS

    def step_seconds(self) -> float:
        return sum(self.steps) / len(self.steps)

    def pause_seconds(self, kind: str) -> float:
        times = self.pauses[kind]
        return sum(times) / len(times) if times else 0.0

    def seconds_left(self, done: int) -> float | None:
        """None until MIN_STEPS steady-state steps have been timed."""
        if not self.ready():
            return None
        s = self.schedule
        return (
            self.step_seconds() * max(s.total - done, 0)
            + self.pause_seconds("eval") * s.evals_after(done)
            + self.pause_seconds("save") * s.saves_after(done)
        )

    def short(self, done: int) -> str:
        """For the progress bar: '~2 min left (estimate)', or '' while there is none."""
        left = self.seconds_left(done)
        return "" if left is None or done >= self.schedule.total else f"~{duration(left)} left (estimate)"

    def announce(self, done: int) -> str:
        """The one line printed once the estimate exists: the figure and what it is made of."""
        s = self.schedule
        parts = [
            f"{max(s.total - done, 0):,} steps at {self.step_seconds():.2f} s (mean of the last {len(self.steps)}; "
            f"the first {WARMUP} after the start are warm-up, left out)"
        ]
        for kind, count, noun in (
            ("eval", s.evals_after(done), "evaluation"),
            ("save", s.saves_after(done), "checkpoint save"),
        ):
            if count:
                cost = f"at ~{self.pause_seconds(kind):.1f} s each" if self.pauses[kind] else "(not timed yet)"
                parts.append(f"{count} {noun}{'s' if count > 1 else ''} {cost}")
        return f"{self.short(done)}: " + "; ".join(parts)


def duration(seconds: float) -> str:
    """A rounded duration for an estimate: '5 s', '40 s', '2.5 min', '12 min', '1.4 h'."""
    if seconds < 60:
        return f"{max(5, 5 * round(seconds / 5)):.0f} s"
    if seconds < 600:
        return f"{round(seconds / 30) / 2:g} min"
    if seconds < 5400:
        return f"{round(seconds / 60):.0f} min"
    return f"{seconds / 3600:.1f} h"
