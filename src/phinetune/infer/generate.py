"""`phinetune generate`: one prompt, or JSONL in -> JSONL out, in batches.

Each output line is the input line (other fields such as an `id` kept) plus `response`, `finish_reason`
("stop" at an end-of-turn token, "length" at --max-new-tokens) and `completion_tokens`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from phinetune.data.prompts import read_prompt_rows
from phinetune.data.reasoning import REASONING_VIEWS, split_reasoning
from phinetune.errors import PhinetuneError
from phinetune.infer.complete import Completion, Sampling, chat_prompt, complete
from phinetune.models.load_options import LoadOptions
from phinetune.progress import console, track
from phinetune.runs.loading import Loaded, load_for_inference


def refuse_same_file(input: Path | None, output: Path | None) -> None:
    """--output naming --input (under any spelling: ./x, an absolute path, a link) would overwrite the prompts."""
    if input is None or output is None:
        return
    same = output.exists() and input.exists() and os.path.samefile(input, output)
    if same or output.expanduser().resolve() == input.expanduser().resolve():
        raise PhinetuneError(
            f"--output {output} is the --input file {input}: writing the answers would replace the prompts; "
            "choose another --output (each output line keeps its input fields)"
        )


def answer_all(
    loaded: Loaded, convs: list[list[dict]], sampling: Sampling, batch_size: int, label: str = "Generating"
) -> list[Completion]:
    if batch_size < 1:
        raise PhinetuneError(f"--batch-size must be >= 1 (got {batch_size})")
    groups = [convs[k : k + batch_size] for k in range(0, len(convs), batch_size)]
    return [
        c for group in track(groups, label) for c in complete(loaded, [chat_prompt(loaded, m) for m in group], sampling)
    ]


def shown_reply(text: str, loaded: Loaded, reasoning: str) -> str:
    if reasoning not in REASONING_VIEWS:
        raise PhinetuneError(f"--reasoning must be {' or '.join(REASONING_VIEWS)} (got {reasoning})")
    return (split_reasoning(text, loaded.spec.reasoning_tags)[1] if reasoning == "hide" else text).strip()


def run_generate(
    target: str,
    prompt: str | None,
    input: Path | None,
    output: Path | None,
    sampling: Sampling,
    batch_size: int = 8,
    load: LoadOptions = LoadOptions(),
    checkpoint: str | None = None,
    reasoning: str = "show",
) -> list[str]:
    """`reasoning`: show a reply's <think> trace (default) or hide it (keep the final answer only)."""
    if (prompt is None) == (input is None):
        raise PhinetuneError("give either a PROMPT or --input FILE.jsonl (exactly one)")
    refuse_same_file(input, output)
    rows = read_prompt_rows(input) if input else [{"messages": [{"role": "user", "content": prompt}]}]
    loaded = load_for_inference(target, load.dtype, load.quant, checkpoint=checkpoint)
    results = answer_all(loaded, [r["messages"] for r in rows], sampling, batch_size)
    answers = [shown_reply(r.text, loaded, reasoning) for r in results]
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as fh:
            for row, res, answer in zip(rows, results, answers):
                out = {
                    **row,
                    "response": answer,
                    "finish_reason": res.finish_reason,
                    "completion_tokens": res.completion_tokens,
                }
                fh.write(json.dumps(out, ensure_ascii=False) + "\n")
        console.print(f"{len(answers)} answers written to {output}")
    else:
        for answer in answers:  # the result, as is: no markup, no wrapping at the terminal width
            sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    return answers
