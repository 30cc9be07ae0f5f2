"""What a training run's loop holds, and the helpers every objective's step uses.

`Loop` is built once by train/recipe.setup; the recipe's loop, the objectives (train/objectives/) and
checkpointing (train/checkpoint.py, train/distributed/elastic.py) read it, and none of them imports the recipe.
`micro_batches` is the data order: a pure function of (seed, step), so a resumed run, on any process count,
trains on exactly the rows the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from accelerate import Accelerator

from phinetune.config import RunConfig
from phinetune.data.dataset import PreparedData
from phinetune.data.packing import Row, batches
from phinetune.runs.run_dir import RunDir
from phinetune.runs.status import RunLock
from phinetune.train.metrics import MetricsLog
from phinetune.train.objectives import Objective


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
    train_rows: list[Row]
    eval_rows: list[Row]
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    steps_per_epoch: int
    log: MetricsLog
    start_step: int = 0  # > 0 when resumed from a checkpoint
    done: int = 0  # optimizer steps completed so far (what run.json's status reports when a run stops)
    objective: Optional[Objective] = None  # train.objective's data, step and evaluation (train/objectives/__init__.py)
    extra: dict = field(default_factory=dict)  # the objective's own state (reference model, ...)
    hooks: Optional[TrainHooks] = None
    sharded: bool = False  # FSDP2 applied by us on CPU (train/distributed/sharding.py): the model is not accelerate-prepared
    adapter_dtype: Optional[torch.dtype] = None  # LoRA adapters computed in this dtype in training steps (train/precision.py)
    lock: Optional[RunLock] = None  # the main process's hold on RUN/train.lock while it trains (runs/status.py)


def make_optimizer(model, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.adapter.loraplus_ratio is not None:
        from phinetune.train.adapter import loraplus_optimizer

        return loraplus_optimizer(model, cfg)
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    import bitsandbytes as bnb

    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[cfg.train.optimizer]
    return cls(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)


def micro_batches(loop: Loop, step: int) -> list[list[Row]]:
    """The micro-batches of optimizer step `step` for this process: a pure function of (seed, step)."""
    cfg, acc = loop.cfg.train, loop.accelerator
    per_step = cfg.grad_accum * acc.num_processes
    epoch, index = divmod(step * per_step, loop.steps_per_epoch * per_step)
    order = batches(loop.train_rows, cfg.batch_size, cfg.seed, epoch)
    chosen = [order[(index + k) % len(order)] for k in range(per_step)]
    return chosen[acc.process_index::acc.num_processes]
