"""Gradient accumulation: one optimizer step over micro-batches with very different trained-token counts
gives the same gradient as one big batch (every trained token weighs the same; transformers#34191)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from phinetune.config import load_config
from phinetune.data.packing import collate, make_rows
from phinetune.data.render import IGNORE, Rendered
from phinetune.train.loss import loss_sum
from phinetune.train.objectives.sft import Sft


def rows_with_trained(tokenizer, trained: list[int]):
    """One row per sample, each with the given number of trained tokens (after an 8-token prompt)."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for n in trained:
        ids = torch.randint(10, len(tokenizer) - 10, (8 + n,), generator=g).tolist()
        samples.append(Rendered(ids, [IGNORE] * 8 + ids[8:], ""))
    return make_rows(samples, 512, packing=False)


def one_step_update(base, tokenizer, rows, batch_size: int, grad_accum: int) -> list[torch.Tensor]:
    """Run the SFT step once with SGD(lr=1) and no clipping: the update is exactly minus the gradient."""
    from accelerate import Accelerator

    model = copy.deepcopy(base).train()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = load_config(
        None, [f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}", "train.max_grad_norm=1e9"]
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loop = SimpleNamespace(
        cfg=cfg,
        accelerator=Accelerator(cpu=True),
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        train_rows=rows,
        steps_per_epoch=1,
        adapter_dtype=None,
    )
    stats = Sft().step(loop, 0)
    assert stats.trained_tokens == sum(sum(1 for x in r.labels[1:] if x != IGNORE) for r in rows)
    return [b - p.detach() for b, p in zip(before, model.parameters())]


@pytest.fixture(scope="module")
def setup(tiny_phi3):
    model, tokenizer = tiny_phi3
    return model.float(), tokenizer, rows_with_trained(tokenizer, [120, 2, 30])


def test_micro_batches_of_very_different_sizes_give_the_big_batch_gradient(setup):
    model, tokenizer, rows = setup
    big = one_step_update(model, tokenizer, rows, batch_size=3, grad_accum=1)
    accumulated = one_step_update(model, tokenizer, rows, batch_size=1, grad_accum=3)
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(a.abs().sum() > 0 for a in big)


def test_reference_gradient_and_the_naive_mean_of_means_differs(setup):
    """The step's gradient is that of (sum of token losses) / (all trained tokens); averaging per
    micro-batch first (the bug) gives a clearly different one on these uneven micro-batches."""
    model, tokenizer, rows = setup
    update = one_step_update(model, tokenizer, rows, batch_size=1, grad_accum=3)

    def grads(loss_fn):
        m = copy.deepcopy(model).train()
        loss_fn(m).backward()
        return [p.grad.detach().clone() for p in m.parameters()]

    def correct(m):
        parts = [loss_sum(m, collate([r], tokenizer.pad_token_id)) for r in rows]
        return sum(loss for loss, _ in parts) / sum(n for _, n in parts)

    def naive(m):
        return sum(loss / n for loss, n in (loss_sum(m, collate([r], tokenizer.pad_token_id)) for r in rows)) / len(
            rows
        )

    for u, g in zip(update, grads(correct)):
        torch.testing.assert_close(u, g, rtol=1e-4, atol=1e-7)
    diff = max(float((u - g).abs().max() / (u.abs().max() + 1e-12)) for u, g in zip(update, grads(naive)))
    assert diff > 0.05, "the naive mean of per-micro-batch means should differ; the micro-batches are too alike"
