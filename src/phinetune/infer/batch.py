"""`phinetune generate`: one prompt, or JSONL in -> JSONL out, in batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from phinetune.errors import DataError, PhinetuneError
from phinetune.infer.generate import Sampling, generate_batch
from phinetune.infer.loading import load_for_inference
from phinetune.progress import console, track


def read_prompts(path: Path) -> list[list[dict]]:
    if not path.exists():
        raise DataError(f"prompt file {path} does not exist")
    convs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            convs.append(row["messages"])
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
            convs.append([{"role": "user", "content": row["prompt"]}])
        else:
            raise DataError(f"{path}:{n}: expected a field 'prompt' (string) or 'messages' (list)")
    return convs


def run_generate(target: str, prompt: Optional[str], input: Optional[Path], output: Optional[Path], max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, seed: Optional[int], batch_size: int, dtype: str, quant: str) -> list[str]:
    if (prompt is None) == (input is None):
        raise PhinetuneError("give either a PROMPT or --input FILE.jsonl (exactly one)")
    convs = read_prompts(input) if input else [[{"role": "user", "content": prompt}]]
    loaded = load_for_inference(target, dtype, quant)
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
    groups = [convs[k:k + batch_size] for k in range(0, len(convs), batch_size)]
    answers = [a for group in track(groups, "Generating") for a in generate_batch(loaded, group, sampling)]
    if output:
        with output.open("w") as fh:
            for conv, answer in zip(convs, answers):
                fh.write(json.dumps({"messages": conv, "response": answer}) + "\n")
        console.print(f"{len(answers)} answers written to {output}")
    else:
        for answer in answers:
            console.print(answer, markup=False, highlight=False)
    return answers
