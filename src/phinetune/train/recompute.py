"""`model.gradient_checkpointing: auto` (the default): recompute activations in backward only when the plan says
the run would not fit in the memory this device has free.

The decision uses models/plan.py's estimate of the run without checkpointing (micro-batch = train.batch_size
rows of data.max_length tokens, which packing fills), with plan's margin (and, on a GPU, its CUDA overhead),
against the free memory now: torch.cuda.mem_get_info on a GPU, MemAvailable of /proc/meminfo on a CPU. An
explicit true/false is kept as given. The choice and its reason are printed, and recorded in RUN/preflight.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phinetune.config.schema import RunConfig
from phinetune.errors import PhinetuneError
from phinetune.models.plan import MARGIN, GiB, estimate, method_of
from phinetune.progress import progress_console


@dataclass(frozen=True)
class Checkpointing:
    on: bool
    reason: str  # stable for one config and model (recorded in preflight.json; check and train agree)
    free: str = ""  # the free memory compared, which moves between calls: printed, not recorded

    def describe(self) -> str:
        return f"{'on' if self.on else 'off'} ({self.reason})"

    def line(self) -> str:
        """The printed line: the choice, the need and (under auto) the free memory it was compared with."""
        return f"gradient checkpointing: {'on' if self.on else 'off'} ({self.free or self.reason})"

    def announce(self) -> None:
        progress_console.print(
            self.line(), highlight=False, markup=False, soft_wrap=True
        )  # one line at any terminal width


def free_memory() -> tuple[int | None, str]:
    """Bytes free on the training device now, and what they are ("GPU memory", "RAM"); None where it cannot be read."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0], "GPU memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "RAM"
    except OSError:
        pass
    return None, "memory"


def choose_checkpointing(cfg: RunConfig, path: str, dtype: str) -> Checkpointing:
    setting = cfg.model.gradient_checkpointing
    if setting != "auto":
        return Checkpointing(
            bool(setting), f"set in the config: model.gradient_checkpointing: {str(bool(setting)).lower()}"
        )
    import torch

    from phinetune.models.inspect import load_facts

    try:
        facts = load_facts(path)
    except PhinetuneError as exc:
        return Checkpointing(False, f"auto: plan cannot read the model ({exc}); left off")
    preset = cfg.adapter.targets if isinstance(cfg.adapter.targets, str) else "all-linear"
    cuda = torch.cuda.is_available()
    est = estimate(
        facts,
        method_of(cfg),
        cfg.data.max_length,
        cfg.train.batch_size,
        False,
        dtype if dtype in ("bf16", "fp16", "fp32") else "bf16",
        cfg.adapter.r,
        preset,
        cfg.adapter.dropout,
        "cuda" if cuda else "cpu",
    )
    need = est.needed() if cuda else est.total * (1 + MARGIN)
    free, what = free_memory()
    needs = f"auto: plan estimates ~{need / GiB:.1f} GiB without it"
    if free is None:
        return Checkpointing(False, f"{needs}; left off, the free {what} could not be read")
    on = need > free
    return Checkpointing(
        on,
        f"{needs}, {'more than' if on else 'which fits in'} the free {what}",
        f"{needs}, {'more than the' if on else 'and'} {free / GiB:.1f} GiB of {what} {'free' if on else 'is free'}",
    )
