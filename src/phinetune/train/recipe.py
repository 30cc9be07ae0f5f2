"""The training recipe, written out in one readable place: load -> data -> adapter -> pre-flight -> loop -> save.

Multi-process execution (DDP / FSDP / DeepSpeed) comes from accelerate, not from code of our own.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from phinetune import __version__
from phinetune.config import RunConfig
from phinetune.data.dataset import PreparedData, prepare_data
from phinetune.data.packing import Row, batches, collate, make_rows
from phinetune.errors import PhinetuneError
from phinetune.models.loading import load_model, load_tokenizer, resolve_model_path
from phinetune.models.turns import end_of_turn
from phinetune.models.specs import TINY_MODELS, get_spec
from phinetune.progress import console, progress
from phinetune.train.adapter import apply_adapter
from phinetune.train.checkpoint import load_checkpoint, register_trainable_only, save_checkpoint, start_or_resume, truncate_metrics
from phinetune.train.launch import check_distributed
from phinetune.train.guards import StopRequests, check_finite, disk_guard, is_oom, oom_message
from phinetune.train.loss import loss_sum
from phinetune.train.memory import release_freed_memory
from phinetune.train.metrics import MetricsLog
from phinetune.train.plots import plot_losses
from phinetune.train.precision import choose_train_dtype
from phinetune.train.preflight import run_preflight
from phinetune.runs.run_dir import RunDir, RunInfo
from phinetune.train.tracking import Trackers, accelerator_kwargs


@dataclass
class TrainResult:
    run: RunDir
    first_eval_loss: Optional[float]
    final_eval_loss: Optional[float]
    steps: int
    recall: Optional[tuple[int, int]] = None


@dataclass
class Loop:
    """Everything the loop touches, built once by `setup`."""

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


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    loop = setup(cfg, resume)
    if loop.start_step:
        first_eval = next((r["eval_loss"] for r in loop.run.read_metrics() if r.get("step") == 0 and "eval_loss" in r), None)
        console.print(f"resumed from step {loop.start_step} of {loop.total_steps}")
    else:
        first_eval = evaluate(loop) if loop.eval_rows else None
        if first_eval is not None:
            loop.log.write(step=0, eval_loss=first_eval, eval_ppl=math.exp(min(first_eval, 50)))
    run_steps(loop, loop.start_step)
    final_eval = evaluate(loop) if loop.eval_rows else None
    if final_eval is not None:
        loop.log.write(step=loop.total_steps, eval_loss=final_eval, eval_ppl=math.exp(min(final_eval, 50)))
    save(loop)
    if loop.log.trackers is not None:
        loop.log.trackers.close()
    result = TrainResult(loop.run, first_eval, final_eval, loop.total_steps)
    if cfg.train.recall_check and loop.accelerator.is_main_process:
        from phinetune.train.recall import recall_check

        result.recall = recall_check(loop.accelerator.unwrap_model(loop.model), loop.tokenizer, loop.data.train_records, cfg)
    return result


def setup(cfg: RunConfig, resume: bool = False) -> Loop:
    release_freed_memory()  # freed activations go back to the OS (see train/memory.py)
    # Our schedule counts global optimizer steps; accelerate's default would step it once per process.
    accelerator = Accelerator(step_scheduler_with_optimizer=False, **accelerator_kwargs(cfg.train.report_to, RunDir(cfg.output.dir)))
    set_seed(cfg.train.seed)
    check_distributed(accelerator, cfg)
    run, checkpoint = start_or_resume(cfg, resume, accelerator)
    spec = get_spec(cfg.model.name, cfg.model.spec)
    with accelerator.main_process_first():  # a tiny base is written once, then read by the others
        path = resolve_model_path(cfg.model, run.base, seed=cfg.train.seed)
    dtype = choose_train_dtype(cfg, spec, path)
    with console.status(f"Loading {cfg.model.name} ({dtype.name}{', nf4' if cfg.model.quant == 'nf4' else ''})"):
        tokenizer = load_tokenizer(path, cfg.model, spec)
        model = load_model(path, cfg.model, spec, tokenizer, dtype)
    base_ref = str(Path(path).resolve()) if cfg.model.name in TINY_MODELS else cfg.model.name
    run.write_info(RunInfo(base_ref, spec.key, cfg.adapter.method, cfg.model.quant, dtype.name, phinetune_version=__version__))
    data = prepare_data(cfg.data, tokenizer, end_of_turn(tokenizer, spec, cfg.model.end_of_turn), spec)
    model = apply_adapter(model, spec, cfg.adapter, cfg.model, tokenizer, cfg.preflight)
    run_preflight(cfg, spec, model, tokenizer, data, dtype, accelerator.is_main_process,
                  save_to=run.preflight if accelerator.is_main_process else None)
    train_rows = make_rows(data.train, cfg.data.max_length, cfg.data.packing)
    eval_rows = make_rows(data.eval, cfg.data.max_length, cfg.data.packing)
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes)))
    total = cfg.train.max_steps or max(1, math.ceil(steps_per_epoch * cfg.train.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = get_scheduler(cfg.train.scheduler if cfg.train.scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=int(total * cfg.train.warmup_ratio), num_training_steps=total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_trainable_only(accelerator, model)
    loop = Loop(cfg, run, accelerator, model, tokenizer, data, train_rows, eval_rows, optimizer, scheduler, total,
                steps_per_epoch, MetricsLog(run.metrics, enabled=accelerator.is_main_process))
    if checkpoint is not None:
        loop.start_step = load_checkpoint(loop, checkpoint)
        if accelerator.is_main_process:
            truncate_metrics(run, loop.start_step, loop.total_steps)
    if accelerator.is_main_process and cfg.train.report_to:
        loop.log.trackers = Trackers(accelerator, run, cfg, loop.start_step)
    return loop


def make_optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
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


def train_step(loop: Loop, step: int) -> dict:
    acc, model = loop.accelerator, loop.model
    micro_rows = micro_batches(loop, step)
    micro = [collate(rows, loop.tokenizer.pad_token_id) for rows in micro_rows]
    # Normalize by the trained tokens of the whole optimizer step, across micro-batches and processes,
    # so every token weighs the same whatever batch it landed in.
    local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    n_tokens = int(acc.reduce(torch.tensor(local, device=acc.device), "sum").item())
    total_loss = 0.0
    for i, batch in enumerate(micro):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        sync = acc.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
        with sync, acc.autocast():
            loss, _ = loss_sum(model, batch)
            acc.backward(loss * acc.num_processes / max(n_tokens, 1))
        total_loss += loss.item()
    step_loss = acc.reduce(torch.tensor(total_loss, device=acc.device), "sum").item() / max(n_tokens, 1)
    check_finite(step_loss, step, micro_rows, loop.tokenizer)  # before the optimizer step: weights stay finite
    grad_norm = acc.clip_grad_norm_(model.parameters(), loop.cfg.train.max_grad_norm)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    real = acc.reduce(torch.tensor(sum(int(b["n_real"]) for b in micro), device=acc.device), "sum").item()
    return {"loss": step_loss, "grad_norm": float(grad_norm), "lr": loop.scheduler.get_last_lr()[0], "tokens": real, "trained_tokens": n_tokens}


def run_steps(loop: Loop, start: int = 0) -> None:
    cfg = loop.cfg.train
    loop.model.train()
    with progress() as bar, StopRequests() as stop:
        task = bar.add_task("Training", total=loop.total_steps, completed=start, info="")
        window_tokens, window_start = 0, time.perf_counter()
        for step in range(start, loop.total_steps):
            try:
                stats = train_step(loop, step)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_oom(exc):
                    raise
                raise PhinetuneError(oom_message(loop.cfg, step)) from None
            window_tokens += stats["tokens"]
            done = step + 1
            if done % cfg.log_every == 0 or done == loop.total_steps:
                elapsed = time.perf_counter() - window_start
                loop.log.write(step=done, epoch=round(done / loop.steps_per_epoch, 3), loss=stats["loss"], lr=stats["lr"],
                               grad_norm=stats["grad_norm"], tokens_per_s=window_tokens / max(elapsed, 1e-9))
                window_tokens, window_start = 0, time.perf_counter()
            if loop.eval_rows and done % cfg.eval_every == 0 and done < loop.total_steps:
                ev = evaluate(loop)
                loop.log.write(step=done, eval_loss=ev, eval_ppl=math.exp(min(ev, 50)))
                loop.model.train()
            saved = save_checkpoint(loop, done) if cfg.save_every and done % cfg.save_every == 0 else None
            if stop.requested(loop.accelerator):
                raise stop.stopped(done, saved or save_checkpoint(loop, done))
            bar.update(task, completed=done, info=f"loss {stats['loss']:.3f}")


@torch.no_grad()
def evaluate(loop: Loop) -> float:
    """Mean loss per trained token over the whole eval set (all processes)."""
    acc = loop.accelerator
    loop.model.eval()
    total, count = 0.0, 0
    rows = loop.eval_rows[acc.process_index::acc.num_processes]
    for group in batches(rows, loop.cfg.train.batch_size, 0, 0, shuffle=False):
        batch = {k: v.to(acc.device) for k, v in collate(group, loop.tokenizer.pad_token_id).items()}
        with acc.autocast():
            loss, n = loss_sum(loop.model, batch)
        total, count = total + loss.item(), count + n
    total = acc.reduce(torch.tensor(total, device=acc.device), "sum").item()
    count = acc.reduce(torch.tensor(count, device=acc.device), "sum").item()
    return total / max(count, 1)


def save(loop: Loop) -> None:
    acc, run = loop.accelerator, loop.run
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    model = acc.unwrap_model(loop.model)
    with console.status("Saving adapter, tokenizer and plots"), disk_guard(f"final weights in {run.path}/"):
        target = run.full_model if loop.cfg.adapter.method == "full" else run.adapter
        model.save_pretrained(target, safe_serialization=True)
        loop.tokenizer.save_pretrained(run.tokenizer)
        plot_losses(run.read_metrics(), run.plot)
        run.set_status("finished")

