"""`phinetune generate`: one prompt, or JSONL in -> JSONL out, in batches.

Each output line is the input line (other fields such as an `id` kept) plus `response`, `finish_reason`
("stop" at an end-of-turn token, "length" at --max-new-tokens) and `completion_tokens`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from phinetune.data.reasoning import REASONING_VIEWS, split_reasoning
from phinetune.errors import DataError, PhinetuneError
from phinetune.infer.complete import Completion, Sampling, chat_prompt, complete
from phinetune.models.load_options import LoadOptions
from phinetune.runs.loading import Loaded, load_for_inference
from phinetune.progress import console, track


# What a prompt file holds, shown with every error about one (generate --input, compare/judge --prompts).
PROMPT_LINES = ('one JSON object per line with a "prompt" (a string) or "messages" (a list of {"role", "content"}) field, '
                'e.g. {"prompt": "What has keys?"} or {"messages": [{"role": "user", "content": "What has keys?"}]}')

ARRAY = "a JSON array, not JSON Lines"
JSON_TYPES = {str: "string", int: "number", float: "number", bool: "true/false", type(None): "null"}


def read_prompt_rows(path: Path) -> list[dict]:
    """Rows with `messages` (a conversation ending in a user turn) or `prompt` (one user message)."""
    if not path.exists():
        raise DataError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is accepted
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); re-save the file as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            what = ARRAY if line.lstrip().startswith("[") else f"not JSON ({exc.msg} at column {exc.colno})"
            raise DataError(f"{path}:{n}: {what}; expected {PROMPT_LINES}") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            row = {**row, "messages": [{"role": "user", "content": row["prompt"]}]}
        if not (isinstance(row, dict) and _valid_messages(row.get("messages"))):
            got = (f"an object with {', '.join(repr(k) for k in list(row)[:5]) or 'no keys'}" if isinstance(row, dict) else
                   ARRAY if isinstance(row, list) else f"a JSON {JSON_TYPES.get(type(row), 'value')}")
            raise DataError(f"{path}:{n}: {got}; expected {PROMPT_LINES}")
        rows.append(row)
    if not rows:
        raise DataError(f"prompt file {path} holds no prompts; expected {PROMPT_LINES}")
    return rows


def refuse_same_file(input: Optional[Path], output: Optional[Path]) -> None:
    """--output naming --input (under any spelling: ./x, an absolute path, a link) would overwrite the prompts."""
    if input is None or output is None:
        return
    same = output.exists() and input.exists() and os.path.samefile(input, output)
    if same or output.expanduser().resolve() == input.expanduser().resolve():
        raise PhinetuneError(f"--output {output} is the --input file {input}: writing the answers would replace the prompts; "
                             "choose another --output (each output line keeps its input fields)")


def _valid_messages(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)


def answer_all(loaded: Loaded, convs: list[list[dict]], sampling: Sampling, batch_size: int, label: str = "Generating") -> list[Completion]:
    if batch_size < 1:
        raise PhinetuneError(f"--batch-size must be >= 1 (got {batch_size})")
    groups = [convs[k:k + batch_size] for k in range(0, len(convs), batch_size)]
    return [c for group in track(groups, label) for c in complete(loaded, [chat_prompt(loaded, m) for m in group], sampling)]


def shown_reply(text: str, loaded: Loaded, reasoning: str) -> str:
    if reasoning not in REASONING_VIEWS:
        raise PhinetuneError(f"--reasoning must be {' or '.join(REASONING_VIEWS)} (got {reasoning})")
    return (split_reasoning(text, loaded.spec.reasoning_tags)[1] if reasoning == "hide" else text).strip()


def run_generate(target: str, prompt: Optional[str], input: Optional[Path], output: Optional[Path], sampling: Sampling,
                 batch_size: int = 8, load: LoadOptions = LoadOptions(), checkpoint: Optional[str] = None,
                 reasoning: str = "show") -> list[str]:
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
                out = {**row, "response": answer, "finish_reason": res.finish_reason, "completion_tokens": res.completion_tokens}
                fh.write(json.dumps(out, ensure_ascii=False) + "\n")
        console.print(f"{len(answers)} answers written to {output}")
    else:
        for answer in answers:  # the result, as is: no markup, no wrapping at the terminal width
            sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    return answers
