"""Tool calling and reasoning in /v1/chat/completions: requests in, OpenAI-shaped messages out.

In: the request's `tools` and messages (assistant `tool_calls`, `tool` results) become the template's own
form through the same normalization as training data (data/normalize.py), so the model is prompted exactly
as it was trained. Out: the generated text is split into `reasoning_content` (the `<think>` trace, as
vLLM's reasoning parsers return it), `content`, and `tool_calls` parsed from Phi-4-mini's
`<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>` (also `functools[...]`, the format vLLM's
Phi-4-mini template asks for). Text that does not parse as calls stays content: never dropped silently.
"""

from __future__ import annotations

import json
import re
import uuid

from phinetune.data.normalize import TOOL_CALL, canonical_tool_calls, canonical_tools, for_template
from phinetune.data.reasoning import split_reasoning
from phinetune.errors import DataError
from phinetune.models.specs import ModelSpec
from phinetune.serve.responses import ChatFormat

_CALL_BLOCK = re.compile(re.escape(TOOL_CALL[0]) + r"(.*?)(?:" + re.escape(TOOL_CALL[1]) + r"|$)", re.S)
_FUNCTOOLS = re.compile(r"functools(\[.*\])", re.S)


class ToolRequestError(ValueError):
    """A request whose tools or tool messages cannot be written for this model (becomes a 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def request_messages(messages: list[dict], tools: list[dict] | None, spec: ModelSpec) -> list[dict]:
    """OpenAI request messages (+ tools) as the messages the chat template takes."""
    turns = []
    for i, m in enumerate(messages):
        turn = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            try:
                turn["tool_calls"] = canonical_tool_calls(m["tool_calls"], "request", f"messages[{i}].tool_calls")
            except DataError as exc:
                raise ToolRequestError(str(exc).removeprefix("request: "), f"messages[{i}].tool_calls") from None
        if m.get("reasoning_content"):
            turn["reasoning"] = m["reasoning_content"]
        turns.append(turn)
    sample = {"messages": turns}
    try:
        if tools:
            sample["tools"] = canonical_tools(tools, "request")
        return for_template(sample, spec)["messages"]
    except DataError as exc:
        raise ToolRequestError(str(exc), "tools" if tools else "messages") from None


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """(content left over, calls as OpenAI tool_calls) from a generated reply."""
    calls, content = [], text
    blocks = list(_CALL_BLOCK.finditer(text))
    if blocks:
        for block in blocks:
            calls += _calls_from_json(block.group(1))
        content = _CALL_BLOCK.sub("", text) if calls else text
    elif (match := _FUNCTOOLS.search(text)) is not None:
        calls = _calls_from_json(match.group(1))
        content = text[: match.start()] if calls else text
    return content.strip(), [_openai_call(c) for c in calls]


def _calls_from_json(body: str) -> list[dict]:
    try:
        value = json.loads(body.strip())
    except json.JSONDecodeError:
        return []
    value = value if isinstance(value, list) else [value]
    calls = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []  # not a call list after all: keep the text as content
        args = item.get("arguments", item.get("parameters", {}))
        calls.append({"name": item["name"], "arguments": args})
    return calls


def _openai_call(call: dict) -> dict:
    args = call["arguments"]
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": call["name"],
            "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
        },
    }


def assistant_message(
    text: str, spec: ModelSpec, reasoning: str = "separate", tools: bool = False
) -> tuple[dict, str | None]:
    """(the response message, finish_reason override) for one generated reply."""
    message: dict = {"role": "assistant", "content": text}
    if reasoning != "inline":
        trace, answer = split_reasoning(text, spec.reasoning_tags)
        if trace is not None:
            message["content"] = answer
            if reasoning == "separate":
                message["reasoning_content"] = trace
    if tools:
        content, calls = parse_tool_calls(message["content"])
        if calls:
            message["content"] = content or None
            message["tool_calls"] = calls
            return message, "tool_calls"
    return message, None


class ReplyFormat(ChatFormat):
    """The chat response shape, with each reply split by assistant_message (reasoning, tool calls).

    Streams are not split: their chunks carry the text as generated (trace inline)."""

    def __init__(self, spec: ModelSpec, reasoning: str = "separate", tools: bool = False):
        self.spec, self.reasoning, self.tools = spec, reasoning, tools

    def message(self, out) -> dict:
        return assistant_message(out.completion.text, self.spec, self.reasoning, self.tools)[0]

    def choice(self, index: int, out) -> dict:
        choice = super().choice(index, out)
        if choice["message"].get("tool_calls"):
            choice["finish_reason"] = "tool_calls"
        return choice
