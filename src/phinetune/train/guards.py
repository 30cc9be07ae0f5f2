"""Guards that turn the usual ways a long run dies into one clear message (and a checkpoint where possible).

NaN/inf loss   -> stop, naming the step, the micro-batch and the samples in it
full disk      -> stop, naming what was being written and the last good checkpoint
out of memory  -> stop, suggesting settings that use less memory
SIGTERM/Ctrl-C -> finish the current step, save a checkpoint, exit (resume continues exactly)
"""

from __future__ import annotations

import contextlib
import errno
import math
import shutil
import signal
from pathlib import Path

import torch

from phinetune.errors import PhinetuneError


class TrainingStopped(PhinetuneError):
    """Training stopped on purpose (a signal); the CLI exits with `exit_code` instead of 2."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- NaN / inf


def check_finite(
    loss: float, step: int, micro: list, tokenizer, accelerator=None, local_loss: float | None = None
) -> None:
    """`micro`: the rows of each micro-batch this process trained on at `step` (0-based step index).

    `loss` is the step's loss summed over processes, the same number on every rank, so all ranks stop here
    together; given the `accelerator` and this rank's own `local_loss`, the message names the rank(s) whose
    loss was not finite and describes that rank's batch (every rank raises the same sentence)."""
    if math.isfinite(loss):
        return
    where, batch = "", describe_batch(micro, tokenizer)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        seen = gather_object([(accelerator.process_index, local_loss is None or math.isfinite(local_loss), batch)])
        culprits = [(rank, text) for rank, finite, text in seen if not finite] or [
            (rank, text) for rank, _, text in seen
        ]
        where = f" on rank {', '.join(str(rank) for rank, _ in culprits)} of {accelerator.num_processes}"
        batch = culprits[0][1]
    raise PhinetuneError(
        f"loss became {loss} at step {step + 1}{where}; nothing after step {step} was saved. "
        f"The batch held: {batch}. Lower train.learning_rate, keep "
        "train.max_grad_norm, use model.dtype=bf16 rather than fp16, or check these samples"
    )


def describe_batch(micro: list, tokenizer, limit: int = 3) -> str:
    """The first samples of a (packed) batch as short text previews: enough to find them in the data file."""
    previews = []
    for rows in micro:
        for row in rows:
            for ids in split_samples(row):
                text = tokenizer.decode(ids, skip_special_tokens=True).strip().replace("\n", " ")
                previews.append(repr(text[:60]))
    more = f" and {len(previews) - limit} more" if len(previews) > limit else ""
    return f"{len(previews)} samples: " + ", ".join(previews[:limit]) + more


def split_samples(row) -> list[list[int]]:
    """A packed row's samples: position ids restart at 0 at each sample start."""
    starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
    return [row.input_ids[a:b] for a, b in zip(starts, starts[1:])]


# ---------------------------------------------------------------- full disk


@contextlib.contextmanager
def disk_guard(what: str, last_good: Path | None = None):
    """Turn ENOSPC (disk full) while writing `what` into one sentence that says what is safe."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        folder = Path(what.split()[-1]).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free / 2**20
        safe = f"the last complete checkpoint is {last_good}" if last_good else "no checkpoint was completed"
        raise PhinetuneError(
            f"disk full while writing {what} ({free:.0f} MiB free there); {safe}. "
            "Free some space (or lower train.keep_checkpoints) and resume with `phinetune train --resume`"
        ) from None


# ---------------------------------------------------------------- out of memory


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def oom_message(cfg, step: int, where: str = "") -> str:
    """`where`: which process ran out (' on rank 1 of 2'), under several."""
    t, m = cfg.train, cfg.model
    tips = []
    if t.batch_size > 1:
        half = max(1, t.batch_size // 2)
        tips.append(
            f"train.batch_size={half} train.grad_accum={t.grad_accum * t.batch_size // half} (same global batch)"
        )
    tips.append(f"data.max_length={max(8, cfg.data.max_length // 2)}")
    if m.gradient_checkpointing is not True:
        tips.append("model.gradient_checkpointing=true")
    if cfg.adapter.method == "full":
        tips.append("adapter.method=lora")
    elif m.quant == "none":
        tips.append("model.quant=nf4 (QLoRA)")
    tips.append(f"`phinetune plan {m.name}` to see what fits your GPU")
    return f"out of memory at step {step + 1}{where}; settings that use less memory: " + ", ".join(tips)


# ---------------------------------------------------------------- SIGTERM / Ctrl-C


class StopRequests:
    """Record SIGTERM/SIGINT instead of dying mid-step; the loop checks `signal_name` after each step."""

    SIGNALS = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("Ctrl-C", 130)}

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequests:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep default behaviour
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.received = signum

    def requested(self, accelerator) -> bool:
        """True on every process when any process got a signal, so all stop at the same step."""
        flag = torch.tensor(0 if self.received is None else 1, device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item()) if accelerator.num_processes > 1 else bool(flag.item())

    def stopped(self, step: int, checkpoint: Path) -> TrainingStopped:
        name, code = self.SIGNALS.get(self.received, ("a signal", 143))
        return TrainingStopped(
            f"stopped by {name} after step {step}; checkpoint saved in {checkpoint}. "
            "Run the same command again (or add --resume) to continue exactly where it stopped",
            code,
        )
