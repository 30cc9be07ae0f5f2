"""Recall check: greedy-decode training prompts and see whether the trained answer comes back.

On a random-weight base this is the proof that learning happened, not just that code ran.
"""

from __future__ import annotations

import re

from rich.text import Text

from phinetune.config import RunConfig
from phinetune.data.end_of_turn import stop_token_ids
from phinetune.data.readers import Record
from phinetune.infer.complete import Sampling, generate_batch
from phinetune.models.specs import get_spec
from phinetune.progress import clip, console
from phinetune.runs.held_out import prompts_of
from phinetune.runs.loading import Loaded


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text.strip())
    return match.group(1) if match else text.strip()


def show_examples(questions: list[str], expected: list[str], answers: list[str], n: int = 3, width: int = 120) -> None:
    """The first n questions with the trained and the generated answer, each on one line and cut at a word boundary."""
    for q, e, a in list(zip(questions, expected, answers))[:n]:
        console.print(f"Q: {q}\n  trained: {e}\n  model:   {clip(' '.join(a.split()), width)}")


def recall_check(model, tokenizer, records: list[Record], cfg: RunConfig) -> tuple[int, int]:
    spec = get_spec(cfg.model.name, cfg.model.spec)
    loaded = Loaded(model.eval(), tokenizer, spec, stop_token_ids(tokenizer, spec), cfg.output.dir)
    pairs = prompts_of(records, cfg.train.recall_check)
    prompts = [conv for conv, _ in pairs]
    expected = [first_sentence(answer) for _, answer in pairs]
    answers = []
    for k in range(0, len(prompts), 8):
        answers += generate_batch(loaded, prompts[k : k + 8], Sampling(max_new_tokens=48))
    hits = sum(_norm(a).startswith(_norm(e)) for a, e in zip(answers, expected))
    console.rule(Text("recall check", style="bold"))
    show_examples([p[-1]["content"] for p in prompts], expected, answers)
    console.print(
        f"[bold]recall: {hits:d}/{len(expected):d} training answers reproduced (greedy decoding)", markup=True
    )
    return hits, len(expected)
