"""Turn a record's conversation into exactly the messages the model's chat template takes.

Records may carry more than role + content: a reasoning trace (`reasoning` on an assistant turn), tool
definitions (`tools` on the record), tool calls (`tool_calls` on an assistant turn) and `tool` turns with
their results. Chat templates know none of these fields by those names, so each is written the way the
model was trained to see it, as data from its spec:

- reasoning: `<think>` + trace + `</think>` + answer in the assistant content (spec.reasoning_tags; the
  Phi-4-reasoning and Phi-4-mini-reasoning model cards write it so);
- Phi-4-mini tools (spec.tool_format "phi4-mini", the real template in its tokenizer_config.json): the
  definitions as a JSON list in the system message's `tools` key (rendered `<|tool|>...<|/tool|>`), each
  call as `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>` in the assistant content, and
  tool results as `tool` turns (rendered `<|tool|>result<|end|>`, as Microsoft's PhiCookBook feeds them);
- the system prompt the model card prescribes, when the conversation has none and the template does
  not insert it by itself (Phi-4-mini-reasoning).

After this step a conversation is plain {role, content} messages (plus `tools` on a system turn), so the
renderer, whichever way it finds the trained tokens, sees only what the template renders.
"""

from __future__ import annotations

import json

from phinetune.errors import DataError
from phinetune.models.specs import ModelSpec

TOOL_CALL = ("<|tool_call|>", "<|/tool_call|>")  # Phi-4-mini's tool-call markers (tokens 200025/200026)


def tool_call_text(calls: list[dict]) -> str:
    """Calls as Phi-4-mini writes them: one JSON list between its markers."""
    body = json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls], ensure_ascii=False)
    return f"{TOOL_CALL[0]}{body}{TOOL_CALL[1]}"


def reasoning_text(reasoning: str, answer: str, spec: ModelSpec) -> str:
    open_tag, close_tag = spec.reasoning_tags
    return f"{open_tag}{reasoning}{close_tag}{answer}"


def for_template(sample: dict, spec: ModelSpec) -> dict:
    """The sample with its messages in template form; plain-text samples pass through."""
    if "messages" not in sample:
        return sample
    messages = [_message(m, spec) for m in sample["messages"]]
    tools = sample.get("tools")
    if tools:
        if spec.tool_format != "phi4-mini":
            raise DataError(
                f"this record has tool definitions, but the {spec.key} chat template has no place for them; "
                "tool calling is supported for Phi-4-mini (model.name=microsoft/Phi-4-mini-instruct)"
            )
        messages = _with_system(messages, spec)
        messages[0] = {**messages[0], "tools": json.dumps(tools, ensure_ascii=False)}
    elif spec.system_prompt and not spec.system_prompt_in_template:
        messages = _with_system(messages, spec)
    return {"messages": messages}


def _with_system(messages: list[dict], spec: ModelSpec) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        return list(messages)
    return [{"role": "system", "content": spec.system_prompt}] + list(messages)


def _message(m: dict, spec: ModelSpec) -> dict:
    role, content = m["role"], m.get("content") or ""
    if role == "tool" and spec.tool_format != "phi4-mini":
        raise DataError(
            f"this record has a tool turn, but the {spec.key} chat template has no tool role; "
            "tool calling is supported for Phi-4-mini (model.name=microsoft/Phi-4-mini-instruct)"
        )
    if role != "assistant":  # a system turn already in template form keeps its tools (normalizing twice is a no-op)
        return {
            "role": role,
            "content": content,
            **({"tools": m["tools"]} if role == "system" and m.get("tools") else {}),
        }
    if m.get("reasoning"):
        content = reasoning_text(m["reasoning"], content, spec)
    if m.get("tool_calls"):
        if spec.tool_format != "phi4-mini":
            raise DataError(
                f"this record has tool calls, but the {spec.key} chat template has no way to write them; "
                "tool calling is supported for Phi-4-mini (model.name=microsoft/Phi-4-mini-instruct)"
            )
        content += tool_call_text(m["tool_calls"])
    return {"role": "assistant", "content": content}


def canonical_tool_calls(calls, where: str, field: str) -> list[dict]:
    """OpenAI-style tool calls ({type, function: {name, arguments: JSON string}}) or plain {name, arguments},
    as [{name, arguments: dict}]; a RowError-style DataError names the field otherwise."""
    if not isinstance(calls, list) or not calls:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of tool calls")
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        args = fn.get("arguments", {}) if isinstance(fn, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: field '{field}[{i}].arguments' is not valid JSON ({exc.msg})") from None
        if not isinstance(name, str) or not name or not isinstance(args, dict):
            raise DataError(
                f"{where}: field '{field}[{i}]' must be {{name: str, arguments: object}} "
                f"(or OpenAI's {{type: function, function: {{name, arguments}}}}), got {call!r:.80}"
            )
        out.append({"name": name, "arguments": args})
    return out


def canonical_tools(tools, where: str) -> list[dict] | None:
    """Tool definitions as the function objects Phi-4-mini's model card lists ({name, description, parameters})."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{where}: field 'tools' must be a list of tool definitions")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function", t) if t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError(
                f"{where}: field 'tools[{i}]' must be {{name, description, parameters}} or "
                f"{{type: function, function: {{...}}}}, got {t!r:.80}"
            )
        out.append(fn)
    return out
