"""Before/after sample answers: a few held-out prompts of the run, answered greedily by the base and the tuned model."""

from __future__ import annotations

import gc
import json
from pathlib import Path

from phinetune.config import RunConfig
from phinetune.data.dataset import split_records
from phinetune.runs.run_dir import RunDir

SAMPLES_FILE = "samples.json"  # cached in the run folder, so re-rendering the report does not regenerate


def held_out_prompts(cfg: RunConfig, n: int) -> list[tuple[list[dict], str]]:
    """(conversation up to the last user turn, the reference answer) for the first n eval records with messages."""
    train, held, _ = split_records(cfg.data, skip_bad=True)
    held = held or train  # no eval split (eval_fraction 0): fall back to training prompts
    out = []
    for rec in held:
        msgs = rec.sample.get("messages") or []
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last:  # needs at least one turn before the answer
            out.append((msgs[:last], msgs[last]["content"]))
        if len(out) == n:
            break
    return out


def generate_samples(run: RunDir, n: int = 3, max_new_tokens: int = 64) -> list[dict]:
    from phinetune.infer.complete import Sampling, generate_batch
    from phinetune.runs.loading import load_for_inference

    prompts = held_out_prompts(run.read_config(), n)
    if not prompts:
        return []
    rows = [{"prompt": conv[-1]["content"], "reference": ref} for conv, ref in prompts]
    for label, adapter in (("base", False), ("tuned", True)):
        loaded = load_for_inference(str(run.path), adapter=adapter)
        answers = generate_batch(loaded, [conv for conv, _ in prompts], Sampling(max_new_tokens=max_new_tokens))
        for row, answer in zip(rows, answers):
            row[label] = answer
        del loaded
        gc.collect()
    (run.path / SAMPLES_FILE).write_text(json.dumps(rows, indent=1))
    return rows


def cached_samples(run: RunDir) -> list[dict] | None:
    path = Path(run.path) / SAMPLES_FILE
    return json.loads(path.read_text()) if path.exists() else None
