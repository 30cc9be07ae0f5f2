"""Before/after sample answers: a few held-out prompts of the run, answered greedily by the base and the tuned model."""

from __future__ import annotations

import json

from phinetune.runs.held_out import held_out_prompts
from phinetune.runs.run_dir import RunDir


def generate_samples(run: RunDir, n: int = 3, max_new_tokens: int = 64) -> list[dict]:
    """Answer the run's first n held-out prompts with base and tuned (greedy) and cache them in RUN/samples.json."""
    from phinetune.infer.complete import Sampling, generate_batch
    from phinetune.runs.loading import base_and_tuned

    prompts = held_out_prompts(run, n)
    if not prompts:
        return []
    rows = [{"prompt": conv[-1]["content"], "reference": ref} for conv, ref in prompts]
    for label, loaded in base_and_tuned(run):
        answers = generate_batch(loaded, [conv for conv, _ in prompts], Sampling(max_new_tokens=max_new_tokens))
        for row, answer in zip(rows, answers):
            row[label] = answer
    run.samples.write_text(json.dumps(rows, indent=1))
    return rows


def cached_samples(run: RunDir) -> list[dict] | None:
    return json.loads(run.samples.read_text()) if run.samples.exists() else None
