"""The training recipe, written out in one readable place: load -> data -> adapter -> pre-flight -> loop -> save.

Multi-process execution (DDP / FSDP / DeepSpeed) comes from accelerate, not from code of our own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from transformers import get_scheduler

from phinetune import __version__
from phinetune.charts import loss_png
from phinetune.config import RunConfig
from phinetune.errors import PhinetuneError, PreflightError
from phinetune.kernels.malloc import pin_malloc_thresholds, threshold_for
from phinetune.models.specs import TINY_MODELS
from phinetune.progress import console, progress
from phinetune.runs.run_dir import RunDir, RunInfo
from phinetune.runs.status import hold_run
from phinetune.train.checkpoint import (
    load_checkpoint,
    register_trainable_only,
    save_checkpoint,
    start_or_resume,
    truncate_metrics,
)
from phinetune.train.distributed.launch import (
    DIST_TIMEOUT_S,
    check_distributed,
    configure_engine,
    process_group_backend,
)
from phinetune.train.distributed.sharding import fsdp2_on_cpu, full_state_dict, local_share, shard
from phinetune.train.eta import Eta, Schedule
from phinetune.train.guards import StopRequests, TrainingStopped, disk_guard, is_oom, oom_message
from phinetune.train.loop import Loop, TrainHooks, make_optimizer
from phinetune.train.metrics import MetricsLog
from phinetune.train.precision import adapter_compute_dtype
from phinetune.train.preflight import run_preflight
from phinetune.train.prepare import prepare, with_merged_spec
from phinetune.train.tracking import Trackers, accelerator_kwargs


@dataclass
class TrainResult:
    run: RunDir
    first_eval_loss: float | None
    final_eval_loss: float | None
    steps: int
    recall: tuple[int, int] | None = None


def train(cfg: RunConfig, resume: bool = False, hooks: TrainHooks | None = None) -> TrainResult:
    """`hooks`: phinetune.eval.checkpoints.training_hooks(cfg), which `phinetune train` passes (needed when eval.tasks is set)."""
    loop = setup(cfg, resume, hooks)
    try:
        announce_plan(loop)  # before the first evaluation, which on a large eval set takes a while itself
        first_eval_s = None
        if loop.start_step:
            key = loop.objective.eval_key
            first_eval = next((r[key] for r in loop.run.read_metrics() if r.get("step") == 0 and key in r), None)
            console.print(f"resumed from step {loop.start_step} of {loop.total_steps}")
        else:
            began = time.perf_counter()
            first_eval = loop.objective.evaluate(loop) if loop.eval_rows else None
            first_eval_s = time.perf_counter() - began if first_eval is not None else None
            if first_eval is not None:
                log_eval(loop, 0, first_eval)
        run_steps(loop, loop.start_step, first_eval_s)
        final_eval = loop.objective.evaluate(loop) if loop.eval_rows else None
        if final_eval is not None:
            log_eval(loop, loop.total_steps, final_eval)
        save(loop)
    except BaseException as exc:
        record_stop(loop.run, loop.accelerator, exc, loop.done)
        raise
    finally:
        if loop.lock is not None:  # after run.json records how it ended
            loop.lock.release()
    if loop.log.trackers is not None:
        loop.log.trackers.close()
    result = TrainResult(loop.run, first_eval, final_eval, loop.total_steps)
    if cfg.train.recall_check and loop.sharded and loop.accelerator.is_main_process:
        console.print(
            "recall check skipped: a sharded model generates only with every rank taking part; run `phinetune eval` on the run"
        )
    if cfg.train.recall_check and loop.accelerator.is_main_process and not loop.sharded:
        from phinetune.train.recall import recall_check

        result.recall = recall_check(
            loop.accelerator.unwrap_model(loop.model), loop.tokenizer, loop.data.train_records, cfg
        )
    return result


def log_eval(loop: Loop, step: int, value: float) -> None:
    loop.log.write(step=step, **loop.objective.eval_metrics(value))


def setup(cfg: RunConfig, resume: bool = False, hooks: TrainHooks | None = None) -> Loop:
    cfg = with_merged_spec(cfg)  # before the run folder records the config: a resume reads the same spec
    # Our schedule counts global optimizer steps; accelerate's default would step it once per process.
    # A bounded wait in every collective: a rank that is alive but stuck cannot hold the others for ever.
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=DIST_TIMEOUT_S), **process_group_backend())
    accelerator = Accelerator(
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[timeout],
        **accelerator_kwargs(cfg.train.report_to, RunDir(cfg.output.dir)),
    )
    set_seed(cfg.train.seed)
    check_distributed(accelerator, cfg)
    configure_engine(accelerator, cfg)
    run, checkpoint = start_or_resume(cfg, resume, accelerator)
    # Held by the main process while it trains: readers tell a live run from a killed one (runs/status.py).
    lock = hold_run(run) if accelerator.is_main_process else None
    try:  # the folder is ours from here: a failure is recorded in run.json, and the next start replaces it
        loop = build_loop(cfg, run, checkpoint, accelerator, hooks)
    except BaseException as exc:
        record_stop(run, accelerator, exc, None, cfg)
        if lock is not None:
            lock.release()
        raise
    loop.lock = lock
    return loop


def stop_status(exc: BaseException, done: int | None) -> str:
    """run.json's status for a run that stopped: failed at pre-flight / interrupted at step N / failed at step N."""
    reason = " ".join(line.strip() for line in str(exc).splitlines()).removeprefix("pre-flight failed:").strip()
    reason = reason[:300] or type(exc).__name__
    if isinstance(exc, PreflightError):
        return f"failed at pre-flight: {reason}"
    if isinstance(exc, (TrainingStopped, KeyboardInterrupt)):
        return "interrupted before training" if done is None else f"interrupted at step {done}"
    return f"failed before training: {reason}" if done is None else f"failed at step {done + 1}: {reason}"


def record_stop(run: RunDir, accelerator, exc: BaseException, done: int | None, cfg: RunConfig | None = None) -> None:
    if not accelerator.is_main_process or not run.path.exists():
        return
    try:
        if run.info_file.exists():
            run.set_status(stop_status(exc, done))
        elif cfg is not None:  # stopped before the model loaded: say so all the same
            run.write_info(
                RunInfo(
                    cfg.model.name,
                    cfg.model.spec or "",
                    cfg.adapter.method,
                    cfg.model.quant,
                    cfg.model.dtype,
                    status=stop_status(exc, done),
                    phinetune_version=__version__,
                )
            )
    except OSError:
        pass  # recording is best effort: the original error is what the user needs


def build_loop(
    cfg: RunConfig, run: RunDir, checkpoint, accelerator: Accelerator, hooks: TrainHooks | None = None
) -> Loop:
    prepared = prepare(cfg, run.base, accelerator.main_process_first)
    model, tokenizer, data = prepared.model, prepared.tokenizer, prepared.data
    # which freed tensors the heap reuses and which go back to the OS (kernels/malloc.py)
    pin_malloc_thresholds(threshold_for(cfg.train.batch_size * cfg.data.max_length, model.config.hidden_size))
    if cfg.eval.tasks and hooks is None and cfg.eval.contamination != "off":
        raise PhinetuneError(
            "eval.tasks is set but this training call was given no eval hooks; train with `phinetune train`, or pass "
            "hooks=phinetune.eval.checkpoints.training_hooks(cfg) to train()"
        )
    if hooks is not None and accelerator.is_main_process:
        hooks.check_data(cfg, data.train_records, run)
    base_ref = str(Path(prepared.path).resolve()) if cfg.model.name in TINY_MODELS else cfg.model.name
    run.write_info(
        RunInfo(
            base_ref,
            prepared.spec.key,
            cfg.adapter.method,
            cfg.model.quant,
            prepared.dtype.name,
            phinetune_version=__version__,
        )
    )
    if accelerator.is_main_process:  # now, not at the end: a run interrupted later is still usable from a checkpoint
        tokenizer.save_pretrained(run.tokenizer)
    run_preflight(
        cfg, prepared, accelerator.is_main_process, save_to=run.preflight if accelerator.is_main_process else None
    )
    goal = prepared.objective
    train_rows, eval_rows = goal.rows(data, cfg)
    steps_per_epoch = max(
        1, math.ceil(len(train_rows) / (cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes))
    )
    total = cfg.train.max_steps or max(1, math.ceil(steps_per_epoch * cfg.train.epochs))
    sharded = fsdp2_on_cpu()
    if sharded:  # before the optimizer, so that it is built on (and keeps state for) this rank's shards only
        model = shard(model)
        held, whole = local_share(model)
        console.print(f"FSDP2 (CPU, gloo): rank {accelerator.process_index} holds {held:,} of {whole:,} parameters")
    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(
        cfg.train.scheduler if cfg.train.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(total * cfg.train.warmup_ratio),
        num_training_steps=total,
    )
    if sharded:  # model and optimizer are checkpointed with DCP (train/checkpoint.py); the schedule by accelerate
        accelerator.register_for_checkpointing(scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        register_trainable_only(accelerator, model)
    loop = Loop(
        cfg,
        run,
        accelerator,
        model,
        tokenizer,
        data,
        train_rows,
        eval_rows,
        optimizer,
        scheduler,
        total,
        steps_per_epoch,
        MetricsLog(run.metrics, enabled=accelerator.is_main_process),
        goal,
        hooks=hooks,
        sharded=sharded,
        adapter_dtype=adapter_compute_dtype(cfg, prepared.dtype),
    )
    goal.begin(loop)
    if checkpoint is not None:
        loop.start_step = loop.done = load_checkpoint(loop, checkpoint)
        if accelerator.is_main_process:
            truncate_metrics(run, loop.start_step, loop.total_steps)
    if accelerator.is_main_process and cfg.train.report_to:
        loop.log.trackers = Trackers(accelerator, run, cfg, loop.start_step)
    return loop


# The embedded default trains 30 epochs over the 64 bundled riddles: right for memorising a toy set, far too
# many passes for a real data file (500 rows x 30 epochs is 2,520 steps, ~20 min on CPU) if copied unchanged.
DEFAULT_SAMPLE_PASSES = 30 * 64


def announce_plan(loop: Loop) -> None:
    """Steps, tokens and sample passes before the bar, and a warning when the passes dwarf the default's."""
    if not loop.accelerator.is_main_process:
        return
    cfg = loop.cfg.train
    epochs = loop.total_steps / loop.steps_per_epoch
    tokens = sum(len(r) for r in loop.train_rows) * epochs
    samples = len(loop.data.train)
    console.print(
        f"plan: {loop.total_steps:,} optimizer steps ({epochs:.3g} epochs x {loop.steps_per_epoch:,} steps, "
        f"{cfg.batch_size * cfg.grad_accum * loop.accelerator.num_processes} sequences each), "
        f"~{tokens:,.0f} tokens over {samples:,} training samples"
    )
    passes = samples * epochs
    if cfg.max_steps is None and epochs >= 5 and passes > 4 * DEFAULT_SAMPLE_PASSES:
        console.print(
            f"[bold yellow]warning:[/bold yellow] {epochs:.3g} epochs over {samples:,} samples is {passes:,.0f} sample "
            f"passes, {passes / DEFAULT_SAMPLE_PASSES:.0f}x the embedded default's (30 epochs over 64 riddles); for a "
            "real data set 1-3 epochs is usual: set train.epochs or train.max_steps",
            markup=True,
        )


def run_steps(loop: Loop, start: int = 0, first_eval_s: float | None = None) -> None:
    """`first_eval_s`: how long the evaluation before the first step took (the time-left estimate's first eval cost)."""
    cfg = loop.cfg.train
    loop.model.train()
    eta = Eta(
        Schedule(loop.total_steps, cfg.eval_every if loop.eval_rows else 0, cfg.save_every, bool(loop.eval_rows)), start
    )
    if first_eval_s is not None:
        eta.pause("eval", first_eval_s)
    announced = False
    with progress(remaining=False) as bar, StopRequests() as stop:
        task = bar.add_task("Training", total=loop.total_steps, completed=start, info="")
        window_tokens, window_start = 0, time.perf_counter()
        for step in range(start, loop.total_steps):
            began = time.perf_counter()
            try:
                stats = loop.objective.step(loop, step)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_oom(exc):
                    raise
                acc = loop.accelerator
                where = f" on rank {acc.process_index} of {acc.num_processes}" if acc.num_processes > 1 else ""
                raise PhinetuneError(oom_message(loop.cfg, step, where)) from None
            window_tokens += stats.tokens
            done = loop.done = step + 1
            eta.step(done, time.perf_counter() - began)
            if done % cfg.log_every == 0 or done == loop.total_steps:
                elapsed = time.perf_counter() - window_start
                loop.log.write(
                    step=done,
                    epoch=round(done / loop.steps_per_epoch, 3),
                    loss=stats.loss,
                    lr=stats.lr,
                    grad_norm=stats.grad_norm,
                    tokens_per_s=window_tokens / max(elapsed, 1e-9),
                    **stats.metrics,
                )
                window_tokens, window_start = 0, time.perf_counter()
            ev = None
            if loop.eval_rows and done % cfg.eval_every == 0 and done < loop.total_steps:
                began = time.perf_counter()
                ev = loop.objective.evaluate(loop)
                eta.pause("eval", time.perf_counter() - began)
                log_eval(loop, done, ev)
                loop.model.train()
            saved = None
            if cfg.save_every and done % cfg.save_every == 0:
                began = time.perf_counter()
                saved = save_checkpoint(loop, done, checkpoint_scores(loop, done, ev) if cfg.keep else None)
                eta.pause("save", time.perf_counter() - began)
            if stop.requested(loop.accelerator):
                raise stop.stopped(done, saved or save_checkpoint(loop, done))
            left = eta.short(done)
            bar.update(task, completed=done, info=f"loss {stats.loss:.3f}" + (f"  {left}" if left else ""))
            if left and not announced and loop.accelerator.is_main_process:
                console.print(eta.announce(done))
                announced = True


def checkpoint_scores(loop: Loop, step: int, evaluated: float | None) -> dict:
    """What train.keep ranks this checkpoint by: the objective's own evaluation (its eval_key: eval_loss, or GRPO's
    eval_reward; evaluated now if this step had none) and eval.tasks scores."""
    scores, own = {}, loop.objective.eval_key
    if own in loop.cfg.train.keep and loop.eval_rows:
        if evaluated is None:
            evaluated = loop.objective.evaluate(loop)
            if step < loop.total_steps:  # the last step's evaluation is logged once, by the final one
                log_eval(loop, step, evaluated)
        scores[own] = evaluated
    if any(c != own for c in loop.cfg.train.keep) and loop.accelerator.is_main_process:
        if loop.hooks is None:
            raise PhinetuneError(
                "train.keep ranks checkpoints by a task, which needs eval hooks; train with `phinetune train`, or pass "
                "hooks=phinetune.eval.checkpoints.training_hooks(cfg) to train()"
            )
        tasks = loop.hooks.score(loop.accelerator.unwrap_model(loop.model), loop.tokenizer)
        loop.log.write(step=step, **tasks)  # task score against step, beside the loss curve
        scores.update(tasks)
    loop.model.train()
    return scores


def save(loop: Loop) -> None:
    acc, run = loop.accelerator, loop.run
    acc.wait_for_everyone()
    full = loop.cfg.adapter.method == "full"
    state = (
        full_state_dict(loop.model) if loop.sharded else None
    )  # a collective: every rank takes part; PEFT picks its keys
    if not acc.is_main_process:
        return
    model = acc.unwrap_model(loop.model)
    with console.status("Saving adapter, tokenizer and plots"), disk_guard(f"final weights in {run.path}/"):
        target = run.full_model if full else run.adapter
        model.save_pretrained(target, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
        loop.tokenizer.save_pretrained(run.tokenizer)
        loss_png(run.read_metrics(), run.plot)
        run.set_status("finished")
