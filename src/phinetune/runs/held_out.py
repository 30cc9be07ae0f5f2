"""The prompts a run was not trained on, as (conversation so far, reference answer) pairs.

One rule for every before/after view (compare, the report's samples) and for the recall check on training
rows: the prompt is the conversation up to its LAST assistant turn, the reference is that turn. The last
turn, not the first, because it is the one every mask trains: with `data.mask=last_assistant` a first-turn
prompt of a multi-turn conversation would test an answer that was never a training target, and the last
turn's prompt carries the whole earlier conversation, as the model sees it when deployed.
"""

from __future__ import annotations

from phinetune.data.dataset import split_records
from phinetune.data.readers import Record
from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import RunDir

Prompt = tuple[list[dict], str]  # (messages before the answer, the reference answer)


def prompt_and_answer(messages: list[dict]) -> Prompt | None:
    """(messages before the last assistant turn, its content); None without an assistant turn after a prompt."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
    return (messages[:last], messages[last]["content"]) if last > 0 else None


def prompts_of(records: list[Record], n: int) -> list[Prompt]:
    """The first n records' prompts (records that are not conversations, or have no answer, are passed over)."""
    found = (prompt_and_answer(r.sample.get("messages") or []) for r in records)
    return [p for p in found if p is not None][:n]


def held_out_prompts(run: RunDir, n: int) -> list[Prompt]:
    """The first n prompts of the run's held-out split (the same seeded split as training made)."""
    try:
        held = split_records(run.read_config().data, skip_bad=True)[1]
    except PhinetuneError as exc:
        raise PhinetuneError(f"cannot read the eval data of {run.path} ({exc})") from None
    return prompts_of(held, n)
