"""SFT, the default objective: next-token cross-entropy on the trained tokens (the replies, as data.mask says).

A step's loss is normalised by the trained tokens of the whole optimizer step, across micro-batches and processes,
so every token weighs the same whatever micro-batch it landed in (tests/test_grad_accum.py). SFT keeps no state:
no reference model, nothing computed before step 1.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.profiler import record_function

from phinetune.config import RunConfig
from phinetune.data.dataset import PreparedData, prepare_data
from phinetune.data.packing import Row, batches, collate, make_rows
from phinetune.data.render import IGNORE
from phinetune.models.specs import get_spec
from phinetune.train.faults import injected
from phinetune.train.guards import check_finite
from phinetune.train.loop import Loop, StepStats, global_count, micro_batches, optimizer_step
from phinetune.train.loss import loss_sum
from phinetune.train.precision import adapter_autocast, adapter_recompute


class Sft:
    name = "sft"
    eval_key = "eval_loss"

    def load_data(self, cfg: RunConfig, tokenizer, eot: str) -> PreparedData:
        """Read, deduplicate, hold out and render the conversations (cached: data/cache.py)."""
        return prepare_data(cfg.data, tokenizer, eot, get_spec(cfg.model.name, cfg.model.spec))

    def rows(self, data: PreparedData, cfg: RunConfig) -> tuple[list[Row], list[Row]]:
        """The renders as rows of data.max_length tokens, packed when data.packing is on."""
        d = cfg.data
        return make_rows(data.train, d.max_length, d.packing), make_rows(data.eval, d.max_length, d.packing)

    def begin(self, loop: Loop) -> None:
        """Nothing to get ready."""

    def step(self, loop: Loop, step: int) -> StepStats:
        """One optimizer step: each micro-batch's summed token loss, backward scaled by the step's trained tokens."""
        acc, model = loop.accelerator, loop.model
        fault = injected(step, acc.process_index)  # None but in the failure tests (train/faults.py)
        micro_rows = micro_batches(loop, step)
        with record_function(
            "phinetune.data"
        ):  # the scopes name the parts of `bench train --profile` (bench/step_profile.py)
            micro = [collate(rows, loop.tokenizer.pad_token_id) for rows in micro_rows]
        n_tokens = global_count(acc, sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro))
        total_loss = 0.0
        for i, batch in enumerate(micro):
            with record_function("phinetune.data"):
                batch = {k: v.to(acc.device) for k, v in batch.items()}
            sync = acc.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
            with sync:
                with acc.autocast(), adapter_autocast(model, loop.adapter_dtype):
                    loss, _ = loss_sum(model, batch)
                    loss = loss * float("nan") if fault == "nan" else loss
                with adapter_recompute(
                    model, loop.adapter_dtype
                ):  # checkpointing's recompute runs the adapters as the forward did
                    acc.backward(loss * acc.num_processes / max(n_tokens, 1))
            total_loss += loss.item()
        step_loss = acc.reduce(torch.tensor(total_loss, device=acc.device), "sum").item() / max(n_tokens, 1)
        # before the optimizer step: weights stay finite
        check_finite(step_loss, step, micro_rows, loop.tokenizer, acc, total_loss / max(n_tokens, 1))
        grad_norm = optimizer_step(loop)
        real = global_count(acc, sum(int(b["n_real"]) for b in micro))
        return StepStats(step_loss, grad_norm, loop.scheduler.get_last_lr()[0], real, n_tokens)

    @torch.no_grad()
    def evaluate(self, loop: Loop) -> float:
        """Mean loss per trained token over the whole eval set (all processes)."""
        acc = loop.accelerator
        loop.model.eval()
        total, count = 0.0, 0
        # Under FSDP2 every rank must run the same forwards (each gathers weights from all ranks), so every
        # rank evaluates all rows and nothing is summed across ranks.
        rows = loop.eval_rows if loop.sharded else loop.eval_rows[acc.process_index :: acc.num_processes]
        for group in batches(rows, loop.cfg.train.batch_size, 0, 0, shuffle=False):
            batch = {k: v.to(acc.device) for k, v in collate(group, loop.tokenizer.pad_token_id).items()}
            with acc.autocast():
                loss, n = loss_sum(loop.model, batch)
            total, count = total + loss.item(), count + n
        if loop.sharded:
            return total / max(count, 1)
        total = acc.reduce(torch.tensor(total, device=acc.device), "sum").item()
        count = acc.reduce(torch.tensor(count, device=acc.device), "sum").item()
        return total / max(count, 1)

    def eval_metrics(self, value: float) -> dict[str, float]:
        """The eval loss and its perplexity."""
        return {self.eval_key: value, "eval_ppl": math.exp(min(value, 50))}
