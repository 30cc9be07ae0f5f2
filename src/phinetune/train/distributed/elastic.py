"""Resuming on another process count: what must stay the same (the global batch) and what may differ (the layout).

What a step computes depends on the global batch, `train.batch_size x train.grad_accum x processes`, not on
how it is split: micro_batches() (train/loop.py) picks step k's micro-batches from global positions
(k x global batch) and deals them out to the ranks, the loss is normalized by the tokens of the whole step,
and the schedule counts global steps. So a checkpoint written by 2 processes with grad_accum=1 continues
on 1 process with grad_accum=2 (or the other way round) on the same curve; a different global batch would
silently change the data order, the number of steps per epoch and the schedule, and is refused.

A checkpoint has one of two layouts, and each loads into a run of the other kind:

    plain    accelerate's save_state: model.safetensors (trainable weights), optimizer.bin, scheduler.bin
             (1 process, or DDP: every rank holds everything, the main process writes it)
    sharded  sharded/ (torch.distributed.checkpoint: trainable weights and optimizer state, each rank
             its shards) and the scheduler as accelerate's custom_checkpoint_0.pkl (FSDP2 on CPU)

Both hold random_states_<rank>.pkl per process. accelerate's load_state reads only its own layout, so a
checkpoint of the other one is read here: DCP loads a sharded checkpoint into any process count and into an
unsharded model (every rank then reads whole tensors); a plain one is handed to a sharded model as a full
state dict, which set_model_state_dict / set_optimizer_state_dict cut into this rank's shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.checkpointing import load_accelerator_state
from accelerate.utils import set_seed
from accelerate.utils.constants import OPTIMIZER_NAME, RNG_STATE_NAME, SCHEDULER_NAME
from safetensors.torch import load_file

from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import CHECKPOINT_SHARDED, CHECKPOINT_SHARDED_SCHEDULER, CHECKPOINT_WEIGHTS, RunDir
from phinetune.train.distributed.sharding import load_sharded

if TYPE_CHECKING:
    from phinetune.train.loop import Loop


def global_batch(batch_size: int, grad_accum: int, processes: int) -> int:
    return batch_size * grad_accum * processes


def split_of(state: dict, run: RunDir) -> tuple[int, int, int]:
    """(batch_size, grad_accum, processes) a checkpoint was written with. Checkpoints older than this module
    record only the process count; their batch settings are the run folder's config.yaml (unchanged then)."""
    if "batch_size" in state:
        return state["batch_size"], state["grad_accum"], state["num_processes"]
    saved = run.read_config().train
    return saved.batch_size, saved.grad_accum, state["num_processes"]


def check_global_batch(path: Path, state: dict, run: RunDir, batch_size: int, grad_accum: int, processes: int) -> None:
    b, a, n = split_of(state, run)
    then, now = global_batch(b, a, n), global_batch(batch_size, grad_accum, processes)
    if then == now:
        return
    fit = then // (batch_size * processes) if then % (batch_size * processes) == 0 else None
    hint = (
        f"e.g. train.grad_accum={fit} with train.batch_size={batch_size} on {processes} process(es)"
        if fit
        else f"choose train.batch_size x train.grad_accum x processes = {then}"
    )
    raise PhinetuneError(
        f"{path} was trained with a global batch of {then} sequences per step (train.batch_size={b} x "
        f"train.grad_accum={a} x {n} process(es)), this run's is {now} ({batch_size} x {grad_accum} x "
        f"{processes}); a resumed run must keep the global batch: {hint}"
    )


def is_sharded(path: Path) -> bool:
    return (path / CHECKPOINT_SHARDED).is_dir()


def load_other_layout(loop: Loop, path: Path) -> None:
    """Model, optimizer, scheduler and this rank's RNG from a checkpoint whose layout is not this run's."""
    acc = loop.accelerator
    if loop.sharded:  # a plain checkpoint into this rank's shards
        load_plain_into_sharded(loop.model, loop.optimizer, path)
        loop.scheduler.load_state_dict(torch.load(path / f"{SCHEDULER_NAME}.bin", weights_only=True))
    else:  # a sharded checkpoint into an unsharded model (1 process, or DDP replicas: each reads whole tensors)
        load_sharded(acc.unwrap_model(loop.model), loop.optimizer.optimizer, path)
        loop.scheduler.scheduler.load_state_dict(torch.load(path / CHECKPOINT_SHARDED_SCHEDULER, weights_only=True))
    # Only the RNG files: accelerate's loader skips models, optimizers and schedulers it is not given.
    load_accelerator_state(str(path), [], [], [], [], process_index=acc.process_index)


def load_plain_into_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, strict=False)  # every rank passes whole tensors and keeps its shard
    set_model_state_dict(model, load_file(str(path / CHECKPOINT_WEIGHTS)), options=full)
    saved = torch.load(path / f"{OPTIMIZER_NAME}.bin", weights_only=True)
    set_optimizer_state_dict(model, optimizer, by_name(saved, model, optimizer), options=full)


def by_name(saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A torch optimizer state dict (parameters numbered in param_groups order) keyed by parameter names instead,
    the form set_optimizer_state_dict takes. The numbering is this optimizer's own: make_optimizer builds the
    same groups, in the same order, from the same named parameters whether the model is sharded or not."""
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    numbered = [i for group in saved["param_groups"] for i in group["params"]]
    if len(numbered) != len(ours):
        raise PhinetuneError(
            f"the optimizer state in the checkpoint holds {len(numbered)} parameters, this run trains "
            f"{len(ours)}; it belongs to another run"
        )
    name_of = dict(zip(numbered, ours))
    return {
        "state": {name_of[i]: value for i, value in saved["state"].items()},
        "param_groups": [{**group, "params": [name_of[i] for i in group["params"]]} for group in saved["param_groups"]],
    }


def seed_ranks_without_state(path: Path, seed: int, step: int, rank: int) -> None:
    """A rank the checkpoint has no RNG file for (more processes now than then) gets a seed of its own,
    fixed by (seed, step, rank), so the same resume replays the same way (dropout, MoE router noise)."""
    if not (path / f"{RNG_STATE_NAME}_{rank}.pkl").exists():
        set_seed((seed * 1_000_003 + step * 1_009 + rank) % 2**32)  # NumPy takes seeds below 2**32
