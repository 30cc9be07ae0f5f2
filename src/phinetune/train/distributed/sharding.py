"""FSDP2 on CPU: PyTorch's `fully_shard` over gloo, applied by us because accelerate will not.

accelerate 1.x selects its FSDP plugin only for GPU-like distributed types (MULTI_GPU, MULTI_XPU, ...);
under `ACCELERATE_USE_CPU` it stays in MULTI_CPU mode and would wrap the model in DDP whatever the config
says. PyTorch's FSDP2 itself runs on CPU with gloo, so when `phinetune train --nproc N --accelerate-config
configs/accelerate/fsdp.yaml` runs without GPUs, the launcher sets PHINETUNE_FSDP2_CPU=1 and this module
shards exactly as accelerate's FSDP2 plugin would on GPUs (each `_no_split_modules` layer, then the root).
The model is then not handed to `accelerator.prepare` (that would add DDP on top); the optimizer is built
on the sharded parameters, so its state is sharded too.

Checkpoints of a sharded run use torch.distributed.checkpoint (DCP), whose files re-shard on load: a
checkpoint written by 2 processes loads in 1 and the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from phinetune.runs.run_dir import CHECKPOINT_SHARDED

ENV = "PHINETUNE_FSDP2_CPU"


def fsdp2_on_cpu() -> bool:
    return os.environ.get(ENV) == "1" and torch.distributed.is_available() and torch.distributed.is_initialized()


def layer_classes(model: torch.nn.Module) -> tuple[type, ...]:
    """The decoder-layer classes the model says must not be split (transformers' `_no_split_modules`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """fully_shard every decoder layer, then the root (which holds embeddings, final norm and lm_head)."""
    from torch.distributed.fsdp import fully_shard

    # DDP broadcasts rank 0's weights when it wraps; FSDP2 keeps what each rank has. The frozen base comes
    # from the same file everywhere, but freshly initialised weights (LoRA's A matrices) depend on each
    # rank's random state, which data preparation on the main process alone has moved: take rank 0's.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                torch.distributed.broadcast(p.data, src=0)
    classes = layer_classes(model)
    for module in model.modules():
        if classes and isinstance(module, classes):
            fully_shard(module)
    fully_shard(model)
    return model


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): shows the parameters are really sharded."""
    local = total = 0
    for p in model.parameters():
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        total += p.numel()
    return local, total


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole (unsharded) state dict, gathered on CPU on rank 0 (empty elsewhere); all ranks must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(model: torch.nn.Module, optimizer, folder: Path) -> None:
    """Model and optimizer state (trainable weights only) as a DCP checkpoint, each rank writing its shards."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(model, optimizer), checkpoint_id=str(folder / CHECKPOINT_SHARDED))


def load_sharded(model: torch.nn.Module, optimizer, folder: Path) -> None:
    """Load a DCP checkpoint into this run's sharding, whatever process count wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    states = _states(model, optimizer)
    dcp.load(states, checkpoint_id=str(folder / CHECKPOINT_SHARDED))
    options = StateDictOptions(strict=False)
    set_model_state_dict(model, states["model"], options=options)
    set_optimizer_state_dict(model, optimizer, states["optim"], options=options)


def _states(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in get_model_state_dict(model).items() if k in names}  # never the frozen base
    return {"model": weights, "optim": get_optimizer_state_dict(model, optimizer)}
