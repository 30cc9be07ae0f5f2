"""What a training run's loop holds, what it asks of an objective, and the helpers every objective's step uses.

`Loop` is built once by train/recipe.setup; the recipe's loop, the objectives (train/objectives/) and
checkpointing (train/checkpoint.py, train/distributed/elastic.py) read it, and none of them imports the recipe.
`Objective` is the one interface between the loop and `train.objective`: the loop trains, evaluates, ranks
checkpoints (train.keep) and logs through it and through nothing else. Loop and Objective name each other, so they
live in one module. `micro_batches` is the data order: a pure function of (seed, step), so a resumed run, on any
process count, trains on exactly the rows the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from accelerate import Accelerator
from torch.profiler import record_function

from phinetune.config import RunConfig
from phinetune.data.dataset import PreparedData
from phinetune.data.packing import batches
from phinetune.runs.run_dir import RunDir
from phinetune.runs.status import RunLock
from phinetune.train.metrics import MetricsLog


class TrainRow(Protocol):
    """One training item as the loop sees it: a packed SFT row, a preference pair, a GRPO prompt.

    checkpoint.rows_digest fingerprints input_ids and labels (a resume on other data is refused), guards.describe_batch
    shows the text of a batch whose loss is not finite, and len() is the tokens the plan counts."""

    @property
    def input_ids(self) -> list[int]: ...

    @property
    def labels(self) -> list[int]: ...

    @property
    def position_ids(self) -> list[int]: ...

    def __len__(self) -> int: ...


@dataclass
class StepStats:
    """What one optimizer step reports; the loop writes it to metrics.jsonl."""

    loss: float  # the step's loss, over every process
    grad_norm: float  # before clipping
    lr: float
    tokens: int  # real (not padding) tokens the step read, over every process: tokens_per_s
    trained_tokens: int  # tokens the loss counted, over every process
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's own curves (margin, reward_mean, ...)


class Objective(Protocol):
    """What `train.objective` selects (train/objectives/): the data it reads, the rows it trains on, its step and its
    evaluation. Each keeps its own state (reference model, reward functions, ...) in a dataclass it holds.

    The recipe calls these in this order: load_data (train/prepare.py), rows, begin, then step for every optimizer
    step and evaluate at step 0, every train.eval_every steps, at a checkpoint that train.keep ranks, and at the end."""

    name: str  # the train.objective value
    eval_key: str  # what `evaluate` returns, as metrics.jsonl and train.keep name it: eval_loss or eval_reward

    def load_data(self, cfg: RunConfig, tokenizer, eot: str) -> PreparedData:
        """Read and render the data (`eot`: the token every assistant turn ends with). Its `train` renders and
        `train_records` are what the pre-flight checks (masks, end-of-turn token), whatever the objective trains on."""
        ...

    def rows(self, data: PreparedData, cfg: RunConfig) -> tuple[Sequence[TrainRow], Sequence[TrainRow]]:
        """(training rows, evaluation rows): what micro_batches deals out, and what `evaluate` reads."""
        ...

    def begin(self, loop: Loop) -> None:
        """Get ready for step 1: called once, before a checkpoint is loaded, so the model is the starting one."""
        ...

    def step(self, loop: Loop, step: int) -> StepStats:
        """Optimizer step `step` (0-based) over micro_batches(loop, step): forward, backward, then optimizer_step.
        Every process calls it; the loss is normalised over the whole step, whatever the process count."""
        ...

    def evaluate(self, loop: Loop) -> float:
        """`eval_key` over all evaluation rows. Every process calls it and gets the same number."""
        ...

    def eval_metrics(self, value: float) -> dict[str, float]:
        """What metrics.jsonl records for an evaluation that returned `value`: {eval_key: value}, and more."""
        ...


@dataclass
class TrainHooks:
    """What the benchmarks of eval.tasks add to training, passed in from above (eval/ sits above train/ in the layers):
    a check of the training records before training (contamination), and scores of the model at a checkpoint (train.keep)."""

    check_data: Callable[[RunConfig, list, RunDir], None]
    score: Callable[[torch.nn.Module, object], dict]


@dataclass
class Loop:
    """Everything the loop touches, built once by train/recipe.setup."""

    cfg: RunConfig
    run: RunDir
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: object
    data: PreparedData
    train_rows: Sequence[TrainRow]
    eval_rows: Sequence[TrainRow]
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    steps_per_epoch: int
    log: MetricsLog
    objective: Objective  # train.objective's data, step, evaluation and state (train/objectives/)
    start_step: int = 0  # > 0 when resumed from a checkpoint
    done: int = 0  # optimizer steps completed so far (what run.json's status reports when a run stops)
    hooks: TrainHooks | None = None
    sharded: bool = (
        False  # FSDP2 applied by us on CPU (train/distributed/sharding.py): the model is not accelerate-prepared
    )
    adapter_dtype: torch.dtype | None = (
        None  # LoRA adapters computed in this dtype in training steps (train/precision.py)
    )
    lock: RunLock | None = None  # the main process's hold on RUN/train.lock while it trains (runs/status.py)


def make_optimizer(model, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.adapter.loraplus_ratio is not None:
        from phinetune.train.adapter import loraplus_optimizer

        return loraplus_optimizer(model, cfg)
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    import bitsandbytes as bnb

    cls = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
    }[cfg.train.optimizer]
    return cls(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)


def micro_batches(loop: Loop, step: int) -> list[list[TrainRow]]:
    """The micro-batches of optimizer step `step` for this process: a pure function of (seed, step)."""
    cfg, acc = loop.cfg.train, loop.accelerator
    per_step = cfg.grad_accum * acc.num_processes
    epoch, index = divmod(step * per_step, loop.steps_per_epoch * per_step)
    order = batches(loop.train_rows, cfg.batch_size, cfg.seed, epoch)
    chosen = [order[(index + k) % len(order)] for k in range(per_step)]
    return chosen[acc.process_index :: acc.num_processes]


def optimizer_step(loop: Loop) -> float:
    """Clip the gradients, step the optimizer and the schedule, zero the gradients; the norm before clipping."""
    with record_function("phinetune.optimizer"):  # a part of `bench train --profile` (bench/step_profile.py)
        grad_norm = loop.accelerator.clip_grad_norm_(loop.model.parameters(), loop.cfg.train.max_grad_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: a DTensor
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def global_count(accelerator: Accelerator, n: int) -> int:
    """`n` summed over every process (the same number on each)."""
    return int(accelerator.reduce(torch.tensor(n, device=accelerator.device), "sum").item())
