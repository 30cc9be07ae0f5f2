"""Eval loss and perplexity during training: logged at step 0, every train.eval_every steps and at the end."""

from __future__ import annotations

import math

import pytest


def test_eval_loss_and_perplexity_are_logged_and_consistent(tiny_cfg):
    from phinetune.train.recipe import train

    result = train(tiny_cfg("train.max_steps=5", "train.eval_every=2"))
    evals = [m for m in result.run.read_metrics() if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 2, 4, 5]  # start, every 2 steps, end (not twice at the end)
    for m in evals:
        assert m["eval_ppl"] == pytest.approx(math.exp(m["eval_loss"]), rel=1e-5)
    assert evals[0]["eval_loss"] == pytest.approx(result.first_eval_loss, abs=1e-6)
    assert evals[-1]["eval_loss"] == pytest.approx(result.final_eval_loss, abs=1e-6)
    assert result.final_eval_loss < result.first_eval_loss  # the riddles are learnable: held-out loss goes down
    # an untrained model's loss is about ln(vocab): a sanity check that it is a mean per token, not a sum
    assert abs(evals[0]["eval_loss"] - math.log(1024)) < 1.5
