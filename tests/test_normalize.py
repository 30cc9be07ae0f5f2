"""Records with reasoning traces and tool use render exactly as the model's own template renders them, and
train exactly the assistant's tokens: the expected text is written out by hand from each template's layout."""

from __future__ import annotations

import json

import pytest

from conftest import realdata
from phinetune.data.formats import RowError
from phinetune.data.formats import messages as read_messages
from phinetune.data.normalize import for_template
from phinetune.data.render import IGNORE, render_sample
from phinetune.errors import DataError
from phinetune.models.specs import PHI4_REASONING_PROMPT, SPECS
from phinetune.models.tiny import build_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_match_result",
            "description": "get match result",
            "parameters": {"match": {"description": "The match", "type": "str"}},
        },
    }
]
TOOL_RECORD = {
    "tools": TOOLS,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What is the result of Arsenal vs ManCity today?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_match_result", "arguments": '{"match": "Arsenal vs ManCity"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "1:1"},
        {"role": "assistant", "content": "It ended 1:1."},
    ],
}
CALL = '<|tool_call|>[{"name": "get_match_result", "arguments": {"match": "Arsenal vs ManCity"}}]<|/tool_call|>'
TOOLS_JSON = json.dumps([t["function"] for t in TOOLS])
# Phi-4-mini's template, by hand: <|role|>content<|end|>, tools after the system content, eos at the end.
TOOL_TEXT = (
    f"<|system|>You are a helpful assistant<|tool|>{TOOLS_JSON}<|/tool|><|end|>"
    "<|user|>What is the result of Arsenal vs ManCity today?<|end|>"
    f"<|assistant|>{CALL}<|end|><|tool|>1:1<|end|><|assistant|>It ended 1:1.<|end|><|endoftext|>"
)


def phi4_mini_tokenizer():
    """The real Phi-4-mini tokenizer and its own template (shipped in tests/fixtures/realdata.tar.xz)."""
    from transformers import GPT2TokenizerFast

    folder = realdata("phi4-mini-instruct")
    tok = GPT2TokenizerFast.from_pretrained(str(folder))
    tok.chat_template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    return tok


def trained_runs(tokenizer, rendered) -> list[str]:
    runs, current = [], []
    for tid, label in zip(rendered.input_ids, rendered.labels):
        if label != IGNORE:
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(r) for r in runs + ([current] if current else [])]


@pytest.mark.parametrize("source", ["tiny", "real"])
def test_tool_record_renders_as_phi4_mini_template_and_trains_only_calls_and_answers(source):
    tok = build_tokenizer(SPECS["phi4-mini"]) if source == "tiny" else phi4_mini_tokenizer()
    spec = SPECS["phi4-mini"]
    sample = for_template(read_messages(TOOL_RECORD, "t.jsonl:1"), spec)
    assert tok.apply_chat_template(sample["messages"], tokenize=False) == TOOL_TEXT
    rendered = render_sample(tok, sample, max_length=4096, eot="<|end|>")
    assert rendered.input_ids == tok(TOOL_TEXT, add_special_tokens=False)["input_ids"]
    assert trained_runs(tok, rendered) == [CALL + "<|end|>", "It ended 1:1.<|end|>"]
    if source == "real":  # the markers are single tokens of the real vocabulary
        ids = tok.convert_tokens_to_ids(["<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>"])
        assert ids == [200023, 200024, 200025, 200026] and all(i in rendered.input_ids for i in ids)


def test_tool_record_without_system_turn_gets_an_empty_one_for_the_tools():
    sample = for_template(
        read_messages({**TOOL_RECORD, "messages": TOOL_RECORD["messages"][1:]}, "t:1"), SPECS["phi4-mini"]
    )
    assert sample["messages"][0] == {"role": "system", "content": "", "tools": TOOLS_JSON}


def test_tool_record_is_refused_for_a_model_without_tool_format():
    with pytest.raises(DataError, match="tool calling is supported for Phi-4-mini"):
        for_template(read_messages(TOOL_RECORD, "t:1"), SPECS["phi3-mini-4k"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "tool", "content": "r"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "does not follow an assistant turn with tool_calls",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{oops"}]},
                    {"role": "tool", "content": "r"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            r"tool_calls\[0\].arguments' is not valid JSON",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
                    {"role": "tool", "content": "r"},
                ]
            },
            "no assistant turn after it",
        ),
    ],
)
def test_bad_tool_records_name_the_field(bad, message):
    with pytest.raises(RowError, match=message):
        read_messages(bad, "t.jsonl:3")


REASONING_RECORD = {
    "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "thinking": "Two and two make four.", "content": "4"},
    ]
}


def test_reasoning_record_renders_in_phi4_reasoning_format_with_its_system_prompt():
    spec, tok = SPECS["phi4-reasoning"], build_tokenizer(SPECS["phi4-reasoning"])
    sample = for_template(read_messages(REASONING_RECORD, "r:1"), spec)
    expected = (
        f"<|im_start|>system<|im_sep|>{PHI4_REASONING_PROMPT}<|im_end|><|im_start|>user<|im_sep|>2+2?<|im_end|>"
        "<|im_start|>assistant<|im_sep|><think>Two and two make four.</think>4<|im_end|>"
    )
    assert (
        tok.apply_chat_template(sample["messages"], tokenize=False) == expected
    )  # the template adds the system prompt
    rendered = render_sample(tok, sample, max_length=4096, eot="<|im_end|>")
    assert trained_runs(tok, rendered) == ["<think>Two and two make four.</think>4<|im_end|>"]


def test_phi4_mini_reasoning_gets_the_model_card_system_prompt():
    spec = SPECS["phi4-mini-reasoning"]
    sample = for_template(read_messages(REASONING_RECORD, "r:1"), spec)
    assert sample["messages"][0] == {
        "role": "system",
        "content": "Your name is Phi, an AI math expert developed by Microsoft.",
    }
    assert sample["messages"][-1]["content"] == "<think>Two and two make four.</think>4"
    tok = build_tokenizer(spec)
    assert tok.apply_chat_template(sample["messages"], tokenize=False).startswith(
        "<|system|>Your name is Phi, an AI math expert developed by Microsoft.<|end|><|user|>2+2?<|end|><|assistant|><think>"
    )


def test_phi4_chatml_template_layout():
    spec, tok = SPECS["phi4"], build_tokenizer(SPECS["phi4"])
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert (
        tok.apply_chat_template(msgs, tokenize=False)
        == "<|im_start|>system<|im_sep|>S<|im_end|><|im_start|>user<|im_sep|>U<|im_end|><|im_start|>assistant<|im_sep|>A<|im_end|>"
    )
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant<|im_sep|>"
    )
    rendered = render_sample(tok, {"messages": msgs}, max_length=512, eot=spec.end_of_turn)
    assert trained_runs(tok, rendered) == ["A<|im_end|>"]
