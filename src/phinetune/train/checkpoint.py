"""Checkpoints that survive kill -9, and the decision to start a run or resume one.

    RUN/checkpoints/step-N/   model.safetensors (trainable weights only), optimizer.bin, scheduler.bin,
                              random_states_<rank>.pkl (accelerate save_state), trainer_state.json (ours)

accelerate's save_state/load_state does the saving: it knows DDP, FSDP and DeepSpeed layouts, writes weights
as safetensors, and loads optimizer, scheduler and RNG files with torch.load(weights_only=True). What it
does not do, we add here: (1) atomicity: a checkpoint is written under a temporary name, every file is
fsynced, then one rename publishes it, so a kill during a save leaves the previous checkpoint as the latest;
(2) trainable-only weights for LoRA (a frozen 7 GB base is never copied into every checkpoint);
(3) run identity: a folder resumes only with the same config, the same training rows and the same global batch
(on any process count, from either layout: train/distributed/elastic.py).
The data order needs no saved state of its own: micro_batches() is a pure function of (seed, step).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from phinetune.config import RunConfig
from phinetune.errors import PhinetuneError
from phinetune.runs.checkpoints import best_checkpoint
from phinetune.runs.run_dir import (
    CHECKPOINT_PREFIX as PREFIX,
)
from phinetune.runs.run_dir import (
    CHECKPOINT_STATE as STATE,
)
from phinetune.runs.run_dir import (
    CHECKPOINT_TMP_PREFIX as TMP_PREFIX,
)
from phinetune.runs.run_dir import (
    CHECKPOINT_WEIGHTS,
    RunDir,
)
from phinetune.runs.status import holder, holder_text
from phinetune.train.distributed.elastic import (
    check_global_batch,
    global_batch,
    is_sharded,
    load_other_layout,
    seed_ranks_without_state,
)
from phinetune.train.distributed.sharding import load_sharded, save_sharded
from phinetune.train.guards import disk_guard

if TYPE_CHECKING:
    from phinetune.train.loop import Loop

# Keys that change how a run is saved or reported, not what it computes: a resume may change them.
IGNORED_FOR_IDENTITY = {
    ("output", "overwrite"),
    ("train", "keep_checkpoints"),
    ("train", "save_every"),
    ("train", "report_to"),
    ("train", "log_every"),
    ("train", "recall_check"),
    ("train", "keep"),
    ("eval", "tasks"),
    ("eval", "data_dir"),
    ("eval", "limit"),
    ("eval", "contamination"),
}
# How the global batch is split may change on resume (another process count); the product is checked instead (train/distributed/elastic.py).
CHECKED_AT_LOAD = {("train", "batch_size"), ("train", "grad_accum")}


# ---------------------------------------------------------------- start or resume


def start_or_resume(cfg: RunConfig, resume: bool, accelerator) -> tuple[RunDir, Path | None]:
    """Create the run folder, or reopen it to resume. Returns the checkpoint to load (None: start at step 0).

    An existing folder resumes when it holds the same run (same config) that has not finished. Without a
    checkpoint (killed before its first save) there is nothing to keep, so the folder is started afresh.
    Every process decides from the folder as it was; only then does the main process change anything.
    """
    run = RunDir(Path(cfg.output.dir))
    checkpoint = _decide(run, cfg, resume)
    accelerator.wait_for_everyone()
    if checkpoint is None and accelerator.is_main_process:
        if run.path.exists():
            shutil.rmtree(run.path)
        RunDir.create(cfg)
    accelerator.wait_for_everyone()
    return run, checkpoint


def _decide(run: RunDir, cfg: RunConfig, resume: bool) -> Path | None:
    live = holder(run) if run.lock.exists() else None
    if live is not None:  # replacing or resuming it would pull the folder from under a process still writing it
        raise PhinetuneError(
            f"a process is still training in {run.path} ({holder_text(live)}); "
            "wait for it to end, stop it, or choose another output.dir"
        )
    occupied = run.path.exists() and any(run.path.iterdir())
    if not occupied or (cfg.output.overwrite and not resume):
        if resume:
            raise PhinetuneError(f"--resume: {run.path} holds no run to resume; drop --resume to start a new run there")
        return None
    if never_trained(run):
        return None  # nothing to keep (a wrong data path, a failed pre-flight): the corrected command replaces it
    differences = config_differences(run, cfg)
    if differences:
        raise PhinetuneError(
            f"output folder {run.path} already holds a different run ({'; '.join(differences[:4])}); "
            "resume it with its own config, choose another output.dir, or pass output.overwrite=true to replace it"
        )
    if run.info_file.exists() and run.read_info().status == "finished":
        raise PhinetuneError(
            f"the run in {run.path} already finished; choose another output.dir or pass output.overwrite=true to train it again"
        )
    return latest_checkpoint(run)


def never_trained(run: RunDir) -> bool:
    """A run folder of ours that holds no completed work: no checkpoint, no final weights, not finished.

    Only folders that hold nothing but run-folder files count, so an output.dir pointed at a folder with
    other files in it is never deleted."""
    known = {
        value.fget(run).name
        for value in vars(RunDir).values()
        if isinstance(value, property) and isinstance(value.fget(run), Path)
    }
    if not run.config.exists() or any(p.name not in known for p in run.path.iterdir()):
        return False
    finished = run.info_file.exists() and run.read_info().status == "finished"
    return not finished and latest_checkpoint(run) is None and not run.has_final_weights


def config_differences(run: RunDir, cfg: RunConfig) -> list[str]:
    if not run.config.exists():
        return ["no config.yaml"]
    try:
        saved = run.read_config().model_dump(mode="json")
    except PhinetuneError as exc:
        return [f"its config.yaml is unreadable: {exc}"]
    now = cfg.model_dump(mode="json")
    return [
        f"{section}.{key}: {saved[section].get(key)!r} there, {value!r} now"
        for section, fields in now.items()
        for key, value in fields.items()
        if (section, key) not in IGNORED_FOR_IDENTITY | CHECKED_AT_LOAD and saved.get(section, {}).get(key) != value
    ]


# ---------------------------------------------------------------- listing


def checkpoints(run: RunDir) -> list[tuple[int, Path]]:
    return run.checkpoint_dirs()


def latest_checkpoint(run: RunDir) -> Path | None:
    found = checkpoints(run)
    return found[-1][1] if found else None


def rows_digest(rows) -> str:
    """Fingerprint of the packed training rows: resuming on different data would silently train on other samples."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.input_ids, row.labels]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- save


def save_checkpoint(loop: Loop, step: int, scores: dict | None = None) -> Path:
    """Write RUN/checkpoints/step-<step> atomically (all processes call this), then keep the newest N and the train.keep bests.

    `scores` (eval_loss, task:metric -> value) go into trainer_state.json, where pruning and `--checkpoint best` read them."""
    acc, run = loop.accelerator, loop.run
    final = run.checkpoints / f"{PREFIX}{step}"
    tmp = run.checkpoints / f"{TMP_PREFIX}{step}"
    with disk_guard(f"checkpoint {final}", latest_checkpoint(run)):
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            if loop.sharded:  # FSDP2 on CPU: trainable weights and optimizer state as DCP shards, every rank writing
                save_sharded(loop.model, loop.optimizer, tmp)
            acc.wait_for_everyone()
            if acc.is_main_process:
                train = loop.cfg.train
                state = {
                    "step": step,
                    "num_processes": acc.num_processes,
                    "batch_size": train.batch_size,
                    "grad_accum": train.grad_accum,
                    "global_batch": global_batch(train.batch_size, train.grad_accum, acc.num_processes),
                    "rows": rows_digest(loop.train_rows),
                    "total_steps": loop.total_steps,
                    "scores": scores or {},
                }
                (tmp / STATE).write_text(json.dumps(state, indent=2))
                _save_adapter_config(acc.unwrap_model(loop.model), tmp)
                _fsync_tree(tmp)
                shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step after a resume
                os.replace(tmp, final)
                _fsync(run.checkpoints)
                prune(run, loop.cfg.train.keep_checkpoints, loop.cfg.train.keep)
        except BaseException:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    acc.wait_for_everyone()
    return final


def _save_adapter_config(model, folder: Path) -> None:
    """A PEFT model's own config beside its weights: inference rebuilds the adapter from it (runs/loading.py)."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is not None:
        config.save_pretrained(str(folder))


def kept_checkpoints(found: list[tuple[int, Path]], keep: int, criteria: list[str]) -> set[Path]:
    """The newest `keep`, plus the best by each train.keep criterion (the newest is always kept: resume starts there)."""
    kept = {p for _, p in found[-keep:]} if keep > 0 else set()
    return kept | {b for b in (best_checkpoint(found, c) for c in criteria) if b is not None}


def prune(run: RunDir, keep: int, criteria: list[str] | None = None) -> None:
    found = checkpoints(run)
    kept = kept_checkpoints(found, keep, criteria or [])
    for _, path in found:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)
    for stale in run.checkpoints.glob(f"{TMP_PREFIX}*"):  # left by a kill mid-save
        shutil.rmtree(stale, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


# ---------------------------------------------------------------- load


def load_checkpoint(loop: Loop, path: Path) -> int:
    """Restore model, optimizer, scheduler and RNG state; return the step to continue from.

    The process count may differ from the one that wrote the checkpoint, and so may its layout (plain or
    sharded, train/distributed/elastic.py); the global batch may not."""
    state = json.loads((path / STATE).read_text())
    acc, train = loop.accelerator, loop.cfg.train
    check_global_batch(path, state, loop.run, train.batch_size, train.grad_accum, acc.num_processes)
    if state["rows"] != rows_digest(loop.train_rows):
        raise PhinetuneError(
            f"{path}: the training data changed since this checkpoint (different packed rows); "
            "resume with the same data files, or start a new run"
        )
    if is_sharded(path) != loop.sharded:
        load_other_layout(loop, path)
    else:
        acc.load_state(str(path))
        if loop.sharded:
            load_sharded(loop.model, loop.optimizer, path)
    seed_ranks_without_state(path, train.seed, int(state["step"]), acc.process_index)
    return int(state["step"])


def register_trainable_only(accelerator, model: torch.nn.Module) -> None:
    """Make save_state/load_state keep only trainable weights (LoRA, modules_to_save) for DDP and single process.

    Names are the unwrapped model's (DDP's `module.` prefix dropped), so the file is the same whether 1 or N
    processes wrote it, and a checkpoint resumes on another process count (train/distributed/elastic.py).
    FSDP and DeepSpeed save through their own sharded paths (the hooks see no weights there)."""
    trainable = {name for name, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def keep_trainable(models, weights, output_dir):
        for state in weights:
            named = unwrapped_names(state)
            state.clear()
            state.update({k: v for k, v in named.items() if k in trainable})

    def load_trainable(models, input_dir):
        for i, m in enumerate(list(models)):
            file = Path(input_dir) / (CHECKPOINT_WEIGHTS if i == 0 else f"model_{i}.safetensors")
            saved = unwrapped_names(load_file(str(file)))  # also a checkpoint DDP wrote before names were unwrapped
            missing = trainable - set(saved)
            if missing:
                raise PhinetuneError(
                    f"{file} lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); it belongs to another run"
                )
            accelerator.unwrap_model(m).load_state_dict(saved, strict=False)
        models.clear()  # loaded here; accelerate must not load them again with strict=True

    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)


def unwrapped_names(state: dict) -> dict:
    """A state dict of a DDP-wrapped model (every key `module.`...) keyed as the model inside it."""
    wrapped = bool(state) and all(k.startswith("module.") for k in state)
    return {k.removeprefix("module."): v for k, v in state.items()} if wrapped else dict(state)


def truncate_metrics(run: RunDir, step: int, last_step: int) -> None:
    """Drop metric records past `step` (and a half-written last line): a resumed run writes them again.

    The final evaluation runs after the last step, so when resuming from the last step it runs again:
    its record (eval at `last_step`) goes too, or the curve would hold it twice."""
    if not run.metrics.exists():
        return
    kept = []
    for line in run.metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut in half
        rerun_final_eval = (
            step >= last_step and record.get("step") == last_step and ("eval_loss" in record or "eval_reward" in record)
        )
        if record.get("step", 0) <= step and not rerun_final_eval:
            kept.append(json.dumps(record))
    tmp = run.metrics.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, run.metrics)
