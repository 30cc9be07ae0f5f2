"""Console output shared by every verb (rich): results on stdout, progress on stderr, library noise off.

`console` has markup off: messages carry paths, config values and lists like `[q_proj, o_proj]` that rich
would otherwise read as style tags and silently drop. A call that styles text passes markup=True and wraps
every dynamic part in `escape()`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape  # noqa: F401  (re-exported: the one escape for styled messages)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
# soft_wrap: text is never broken into lines at the terminal width (80 columns when piped), so a path or a
# `file:line` in a message stays one piece to copy or grep; tables and rules still fit the width.
console = Console(
    stderr=False, highlight=False, markup=False, emoji=False, soft_wrap=True
)  # `:a:` in a message stays `:a:`
# Bars and spinners go to stderr, so `phinetune generate ... > answer.txt` captures only the answer.
progress_console = Console(stderr=True, highlight=False, markup=False, emoji=False)

# Loggers of libraries that print at import or load time what a user cannot act on (bitsandbytes'
# "Failed to load CPU gemm_4bit_forward from kernels-community" even without quantization, the kernels
# package's "Skipping publisher trust check for 'kernels-community/...'", ...).
NOISY_LOGGERS = ("bitsandbytes", "kernels", "accelerate", "torch.distributed", "peft", "datasets", "httpx", "urllib3")
# Hub kernels bitsandbytes (0.50) asks the `kernels` package for at import, i.e. on every `import peft`: on a
# CPU with avx512_bf16 its CPU 4-bit matmul, on macOS its MPS ops. bitsandbytes has no switch for it, so the
# kernels package's own LOCAL_KERNELS override names them with a folder that does not exist: the lookup fails
# at once, without a Hub request, and bitsandbytes keeps its built-in kernel (what it uses offline anyway).
BNB_HUB_KERNELS = ("kernels-community/quantization-bitsandbytes", "kernels-community/bitsandbytes-mps")
NO_KERNEL_FOLDER = "/nonexistent/phinetune-fetches-no-hub-kernels"


def quiet() -> bool:
    return os.environ.get("PHINETUNE_QUIET") == "1"


def verbose() -> bool:
    return os.environ.get("PHINETUNE_VERBOSE") == "1"


def say(text: str) -> None:
    """A line of results as it is: no wrapping at the terminal width (tables stay aligned), no markup."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def no_hub_kernels() -> None:
    """No library downloads and runs kernel code from the Hub while a command runs (called before any import).

    transformers (5.x) kernelizes every model it loads unless USE_HUB_KERNELS is off (on CUDA: Phi-3's RMSNorm,
    rotary and activations swapped for kernels-community downloads), and bitsandbytes fetches its own at import
    (BNB_HUB_KERNELS). The tests check our layers against PyTorch's; a variable the user set is left as it is."""
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    os.environ.setdefault("LOCAL_KERNELS", ":".join(f"{repo}={NO_KERNEL_FOLDER}" for repo in BNB_HUB_KERNELS))


def silence_libraries() -> None:
    """Library warnings, info logs and weight-loading bars off, unless PHINETUNE_VERBOSE=1 (`--verbose`).

    Called before transformers/peft/bitsandbytes are imported (the bitsandbytes line is logged at import)."""
    if verbose():
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed (imported by accelerate when installed) resets its logger's level when it creates it and
    # prints "Setting accelerator to CPU" to stdout at import; a filter survives that reset.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*", module="transformers")
    # Read when each library is imported (transformers' "Loading weights" / "Writing model shards" bars follow
    # huggingface_hub's switch), so setting them here costs no import: a quick error stays quick.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if "transformers" in sys.modules:  # imported already: switch it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut at a word boundary with an ellipsis when it is longer.

    A single word longer than half the limit is cut inside itself: the excerpt should still show something."""
    if len(text) <= limit:
        return text
    room = limit - 1  # the ellipsis takes one
    keep = text[:room]
    if not text[room].isspace():  # the cut falls inside a word: end before it
        space = max(keep.rfind(" "), keep.rfind("\n"), keep.rfind("\t"))
        keep = keep[:space] if space > 0 else ""
    keep = keep.rstrip().rstrip(",;:").rstrip()
    return (keep if len(keep) >= limit // 2 else text[:room]) + "…"


def progress(remaining: bool = True) -> Progress:
    """`remaining=False`: no time-remaining column (training shows its own estimate in the info field, train/eta.py:
    rich's rate over the last 30 s jumps with every evaluation and checkpoint save)."""
    columns = [
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
    ]
    return Progress(
        *columns,
        *([TimeRemainingColumn()] if remaining else []),
        console=progress_console,
        disable=quiet(),
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    items = list(items) if total is None else items
    with progress() as bar:
        task = bar.add_task(description, total=total if total is not None else len(items), info="")
        for item in items:
            yield item
            bar.advance(task)


def print_table(table) -> None:
    """A table of numbers at its natural width: rich would squeeze it to the terminal (80 columns when piped)
    and cut its figures to `1…`; a wide line that wraps in a narrow terminal still shows every digit."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(width=10_000), table).maximum
    auto = console._width  # None: follow the terminal (print(width=...) cannot exceed it, so widen the console itself)
    console.width = max(needed, console.width)
    try:
        console.print(table)
    finally:
        console._width = auto
