"""Tool calling and reasoning through /v1/chat/completions, parsed by the official openai client from real HTTP
responses. Generation is scripted (the worker's `complete` is replaced by one that records the prompt it got
and returns a fixed reply), so both directions are checked exactly: the prompt is Phi-4-mini's own layout
with the tools and earlier calls, and the reply's calls come back as OpenAI tool_calls."""

from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest
import uvicorn

from phinetune.infer.complete import Completion
from phinetune.models.specs import SPECS
from phinetune.serve.tools import assistant_message, parse_tool_calls

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOLS_JSON = json.dumps([TOOLS[0]["function"]])
CALL = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'


class Script:
    reply = ""
    prompts: list[str] = []


def scripted_complete(loaded, prompts, sampling, stop=(), streamer=None, cancel=None):
    # The worker hands over token ids (or texts): kept as the text they are, to compare with the layout by hand.
    Script.prompts = [p if isinstance(p, str) else loaded.tokenizer.decode(p) for p in prompts]
    return [Completion(Script.reply, 10, 5, "stop") for _ in prompts]


@pytest.fixture(scope="module")
def served():
    from phinetune.runs.loading import load_for_inference
    from phinetune.serve.app import ServeSettings, create_app

    loaded = load_for_inference("tiny-phi4", "fp32")
    settings = ServeSettings("tiny", max_tokens=16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("phinetune.serve.worker.complete", scripted_complete)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(
            uvicorn.Config(create_app(loaded, settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        yield client, loaded, settings
        srv.should_exit = True
        thread.join(timeout=15)


def test_tools_prompt_and_parsed_tool_calls(served):
    client, loaded, _ = served
    Script.reply = CALL
    resp = client.chat.completions.create(
        model="tiny", tools=TOOLS, messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    assert Script.prompts == [
        f"<|system|><|tool|>{TOOLS_JSON}<|/tool|><|end|><|user|>Weather in Paris?<|end|><|assistant|>"
    ]
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_result_round_trip_renders_the_earlier_call(served):
    client, _, _ = served
    Script.reply = "It is 18C in Paris."
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    resp = client.chat.completions.create(model="tiny", tools=TOOLS, messages=msgs)
    assert Script.prompts == [
        f"<|system|>Be brief.<|tool|>{TOOLS_JSON}<|/tool|><|end|><|user|>Weather in Paris?<|end|>"
        f"<|assistant|>{CALL}<|end|><|tool|>18C<|end|><|assistant|>"
    ]
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content == "It is 18C in Paris."
    assert not resp.choices[0].message.tool_calls


def test_reasoning_content_shown_or_hidden(served):
    client, loaded, settings = served
    loaded.spec = SPECS["phi4-mini-reasoning"]  # same architecture and template as the tiny Phi-4-mini
    try:
        Script.reply = "<think>3*x^2 = -4*x - 4 ...</think>\n\nNo real solution."
        msg = (
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Solve 3x^2+4x+5=1"}])
            .choices[0]
            .message
        )
        assert Script.prompts[0].startswith(
            "<|system|>Your name is Phi, an AI math expert developed by Microsoft.<|end|><|user|>"
        )
        assert msg.content == "No real solution." and msg.reasoning_content == "3*x^2 = -4*x - 4 ..."
        settings.reasoning = "hide"
        msg = (
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Solve it"}])
            .choices[0]
            .message
        )
        assert msg.content == "No real solution." and getattr(msg, "reasoning_content", None) is None
    finally:
        loaded.spec, settings.reasoning = SPECS["phi4-mini"], "separate"


def test_tools_refused_for_a_model_without_a_tool_format(served):
    client, loaded, _ = served
    loaded.spec = SPECS["phi3-mini-4k"]
    try:
        with pytest.raises(openai.BadRequestError, match="tool calling is supported for Phi-4-mini"):
            client.chat.completions.create(model="tiny", tools=TOOLS, messages=[{"role": "user", "content": "hi"}])
    finally:
        loaded.spec = SPECS["phi4-mini"]
    with pytest.raises(openai.BadRequestError, match="stream=true with tools"):
        client.chat.completions.create(
            model="tiny", tools=TOOLS, stream=True, messages=[{"role": "user", "content": "hi"}]
        )


@pytest.mark.parametrize(
    "text, content, calls",
    [
        (CALL, "", [("get_weather", {"city": "Paris"})]),
        (
            'Checking. <|tool_call|>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]',
            "Checking.",
            [("a", {}), ("b", {"x": 1})],
        ),
        ('functools[{"name": "get_weather", "arguments": {"city": "Rome"}}]', "", [("get_weather", {"city": "Rome"})]),
        ("<|tool_call|>[not json]<|/tool_call|>", "<|tool_call|>[not json]<|/tool_call|>", []),  # kept, never dropped
        ("Plain answer.", "Plain answer.", []),
    ],
)
def test_parse_tool_calls(text, content, calls):
    left, parsed = parse_tool_calls(text)
    assert left == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed] == calls


def test_assistant_message_inline_keeps_the_trace():
    msg, finish = assistant_message("<think>t</think>a", SPECS["phi4-reasoning"], "inline")
    assert msg == {"role": "assistant", "content": "<think>t</think>a"} and finish is None


def test_real_tiny_generation_with_tools_answers(served):
    """The unscripted path: the tiny model really generates from the tools prompt (its text is noise)."""
    from phinetune.infer.complete import complete

    client, _, _ = served
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("phinetune.serve.worker.complete", complete)
        resp = client.chat.completions.create(
            model="tiny", tools=TOOLS, max_tokens=6, messages=[{"role": "user", "content": "hi"}]
        )
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls") and resp.usage.completion_tokens >= 1
