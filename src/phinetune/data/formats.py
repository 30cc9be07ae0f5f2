"""Record formats: each one is a converter from a raw row to our single shape, looked up by name in FORMATS.

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}   conversations
    {"text": str}                                                                plain text (every token trained)

A converter raises RowError naming the row (file:line), the field, and what was expected. Detection looks
only at which fields a row has, and answers only when exactly one format fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from phinetune.data.normalize import canonical_tool_calls, canonical_tools
from phinetune.errors import DataError

ROLES = ("system", "user", "assistant")
# ShareGPT speaker names -> our roles (the `from` field); OpenAI names map to themselves.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
GUANACO_TURN = re.compile(r"###\s*(Human|Assistant)\s*:")
GUANACO_ROLES = {"Human": "user", "Assistant": "assistant"}
NOTE = "_note"  # key a converter adds when it repaired a row; read_records moves it into the report


class RowError(DataError):
    """One bad row: `kind` is a short reason used to group skipped rows in the summary."""

    def __init__(self, where: str, kind: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.where, self.kind = where, kind


def _field(row: dict, name: str, where: str, optional: bool = False) -> str | None:
    """A string field that must be present and non-empty (or may be absent/empty when optional)."""
    value = row.get(name)
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise RowError(
            where,
            f"missing field '{name}'",
            f"missing field '{name}' (fields present: {', '.join(sorted(row)) or 'none'})",
        )
    if not isinstance(value, str):
        raise RowError(
            where,
            f"wrong type in '{name}'",
            f"field '{name}' must be a string, got {type(value).__name__} {value!r:.60}",
        )
    if not optional and not value.strip():
        raise RowError(where, f"empty field '{name}'", f"field '{name}' is empty; expected non-empty text")
    return value


def _list_field(row: dict, name: str, where: str) -> list:
    value = row.get(name)
    if value is None:
        raise RowError(
            where,
            f"missing field '{name}'",
            f"missing field '{name}' (fields present: {', '.join(sorted(row)) or 'none'})",
        )
    if not isinstance(value, list):
        raise RowError(
            where, f"wrong type in '{name}'", f"field '{name}' must be a list of turns, got {type(value).__name__}"
        )
    if not value:
        raise RowError(
            where,
            "empty conversation",
            f"field '{name}' is an empty conversation; expected at least a user and an assistant turn",
        )
    return value


def check_turns(msgs: list[dict], where: str, name: str = "messages") -> dict:
    """Optional leading system turn, then user/assistant strictly alternating, ending on assistant.

    Tool use counts as part of one assistant turn: an assistant turn with tool_calls, the tool results
    (`tool` turns), then the assistant again."""
    for i, m in enumerate(msgs):
        if not m["content"].strip() and not m.get("tool_calls"):
            raise RowError(where, "empty turn", f"field '{name}[{i}]' ({m['role']}) has empty content")
        if m["role"] == "system" and i != 0:
            raise RowError(
                where,
                "misplaced system turn",
                f"field '{name}[{i}]' is a system turn; only the first turn may be a system prompt",
            )
        if m["role"] == "tool" and not (i and (msgs[i - 1]["role"] == "tool" or msgs[i - 1].get("tool_calls"))):
            raise RowError(
                where,
                "misplaced tool turn",
                f"field '{name}[{i}]' is a tool result but does not follow an assistant turn with tool_calls",
            )
        if m["role"] == "tool" and (i + 1 == len(msgs) or msgs[i + 1]["role"] not in ("tool", "assistant")):
            raise RowError(
                where, "unanswered tool turn", f"field '{name}[{i}]' is a tool result with no assistant turn after it"
            )
    turns = [
        m["role"]
        for j, m in enumerate(msgs)
        if m["role"] not in ("system", "tool")
        and not (m["role"] == "assistant" and j and msgs[j - 1]["role"] == "tool")
    ]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            n = i + (len(msgs) - len(turns))
            raise RowError(
                where,
                f"two {role} turns in a row" if i and turns[i - 1] == role else f"turn order ({role} first)",
                f"field '{name}[{n}]' is {_a(role)} turn but {_a(expected)} turn was expected (turns must alternate user/assistant)",
            )
    if not turns or turns[-1] != "assistant":
        raise RowError(
            where,
            "ends on a user turn" if turns else "no user/assistant turns",
            f"field '{name}' must end with an assistant turn (it ends with {turns[-1] if turns else 'no turn'}); nothing would be trained",
        )
    return {"messages": msgs}


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


REASONING_FIELDS = ("reasoning", "thinking", "reasoning_content")  # names datasets use for an assistant's trace


def messages(row: dict, where: str) -> dict:
    """OpenAI style: messages = [{role, content}, ...], optional system prompt, multi-turn; assistant turns may
    carry a reasoning trace (reasoning / thinking / reasoning_content) and tool_calls, followed by `tool` turns
    with the results; the record may carry `tools` (definitions)."""
    msgs = _list_field(row, "messages", where)
    if all(isinstance(m, str) for m in msgs):
        return riddles(row, where)
    out = [_turn(m, i, where) for i, m in enumerate(msgs)]
    record = check_turns(out, where)
    try:
        tools = canonical_tools(row.get("tools"), where)
    except DataError as exc:
        raise RowError(where, "bad tools", str(exc).removeprefix(f"{where}: ")) from None
    return {**record, "tools": tools} if tools else record


def _turn(m, i: int, where: str) -> dict:
    calls = m.get("tool_calls") if isinstance(m, dict) else None
    content = m.get("content") if isinstance(m, dict) else None
    if calls and content is None:
        content = ""  # OpenAI writes content: null on a turn that only calls tools
    if not isinstance(m, dict) or m.get("role") not in ROLES + ("tool",) or not isinstance(content, str):
        raise RowError(
            where,
            "bad turn",
            f"field 'messages[{i}]' must be {{role: system|user|assistant|tool, content: str}}, got {m!r:.80}",
        )
    turn = {"role": m["role"], "content": content}
    traces = [f for f in REASONING_FIELDS if m.get(f)]
    if traces and m["role"] == "assistant":
        if not isinstance(m[traces[0]], str):
            raise RowError(
                where,
                f"wrong type in '{traces[0]}'",
                f"field 'messages[{i}].{traces[0]}' must be a string (the reasoning trace)",
            )
        turn["reasoning"] = m[traces[0]]
    if calls:
        if m["role"] != "assistant":
            raise RowError(
                where,
                "misplaced tool_calls",
                f"field 'messages[{i}].tool_calls' is on a {m['role']} turn; only assistant turns call tools",
            )
        try:
            turn["tool_calls"] = canonical_tool_calls(calls, where, f"messages[{i}].tool_calls")
        except DataError as exc:
            raise RowError(where, "bad tool_calls", str(exc).removeprefix(f"{where}: ")) from None
    return turn


def riddles(row: dict, where: str) -> dict:
    """riddles_evolved shape: messages = [str, str, ...] alternating user, assistant, user, ..."""
    msgs = _list_field(row, "messages", where)
    for i, m in enumerate(msgs):
        if not isinstance(m, str):
            raise RowError(
                where,
                "wrong type in 'messages'",
                f"field 'messages[{i}]' must be a string in the riddles format, got {type(m).__name__}",
            )
    return check_turns([{"role": ROLES[1 + i % 2], "content": m} for i, m in enumerate(msgs)], where)


def sharegpt(row: dict, where: str) -> dict:
    """ShareGPT: conversations = [{from: human|gpt|system, value}, ...] (role/content entries also accepted)."""
    turns = _list_field(row, "conversations", where)
    out = []
    for i, t in enumerate(turns):
        speaker = t.get("from", t.get("role")) if isinstance(t, dict) else None
        text = t.get("value", t.get("content")) if isinstance(t, dict) else None
        if speaker not in SHAREGPT_ROLES or not isinstance(text, str):
            raise RowError(
                where,
                "bad turn",
                f"field 'conversations[{i}]' must be {{from: human|gpt|system, value: str}}, got {t!r:.80}",
            )
        out.append({"role": SHAREGPT_ROLES[speaker], "content": text})
    return check_turns(out, where, "conversations")


def alpaca(row: dict, where: str) -> dict:
    """instruction (+ optional input, system) -> output, as in huanhuan and python_code_instructions."""
    instruction, output = _field(row, "instruction", where), _field(row, "output", where)
    extra, system = _field(row, "input", where, optional=True), _field(row, "system", where, optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": output},
    ]
    return {"messages": msgs}


def prompt_completion(row: dict, where: str) -> dict:
    """prompt -> completion pairs: one user turn, one trained assistant turn."""
    prompt, completion = _field(row, "prompt", where), _field(row, "completion", where)
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}


def guanaco(row: dict, where: str) -> dict:
    """text = '### Human: ... ### Assistant: ...' (openassistant-guanaco), parsed into turns."""
    text = _field(row, "text", where)
    parts = GUANACO_TURN.split(text)
    if parts[0].strip():
        raise RowError(
            where,
            "text before first turn",
            f"field 'text' must start with '### Human:'; found {parts[0].strip()!r:.60} before it",
        )
    if len(parts) < 3:
        raise RowError(where, "no guanaco turns", "field 'text' has no '### Human:' / '### Assistant:' turns")
    msgs = [{"role": GUANACO_ROLES[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]
    if len(msgs) > 2 and msgs[-1]["role"] == "user":
        # openassistant-guanaco keeps the follow-up question nobody answered at the end of about a quarter
        # of its rows: there is nothing to train in it, so it is dropped, and counted in the read report.
        return {**check_turns(msgs[:-1], where, "text"), NOTE: "dropped a trailing unanswered '### Human:' turn"}
    return check_turns(msgs, where, "text")


def text(row: dict, where: str) -> dict:
    """Plain text for continued pre-training: every token is trained."""
    return {"text": _field(row, "text", where)}


FORMATS: dict[str, Callable[[dict, str], dict]] = {
    "messages": messages,
    "riddles": riddles,
    "sharegpt": sharegpt,
    "alpaca": alpaca,
    "guanaco": guanaco,
    "prompt_completion": prompt_completion,
    "text": text,
}

# Which fields identify a format (all must be present). `text` rows are split by content below.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


def detect_format(row: dict) -> str:
    """The one format whose fields the row has; otherwise a DataError asking for data.format."""
    fits = [name for name, fields in SIGNATURES.items() if all(f in row for f in fields)]
    if len(fits) > 1 and "text" in fits:
        # Structured sets often carry a pre-rendered copy in `text` (tatsu-lab/alpaca does): the
        # structured fields are the ones that tell prompt from answer, so they win.
        fits.remove("text")
    if len(fits) != 1:
        found = f"it fits {', '.join(fits)}" if fits else "no known format fits"
        raise DataError(
            f"cannot tell the data format from the fields {sorted(row)} ({found}); set data.format "
            f"(one of {', '.join(FORMATS)}) and, for other field names, data.columns"
        )
    name = fits[0]
    if (
        name == "messages"
        and isinstance(row["messages"], list)
        and row["messages"]
        and all(isinstance(m, str) for m in row["messages"])
    ):
        return "riddles"
    if name == "text" and isinstance(row["text"], str) and GUANACO_TURN.match(row["text"].lstrip()):
        return "guanaco"
    return name
