"""Formats: every shape users bring becomes the same {messages} / {text} sample; detection only when unambiguous."""

from __future__ import annotations

import pytest

from conftest import realdata
from phinetune.data.formats import FORMATS, NOTE, RowError, detect_format
from phinetune.errors import DataError

U, A, S = "user", "assistant", "system"


def roles(sample: dict) -> list[str]:
    return [m["role"] for m in sample["messages"]]


def test_riddles_evolved_list_of_strings_alternates():
    row = {"messages": ["What has keys?", "A piano.", "Why?", "It plays music."]}
    assert detect_format(row) == "riddles"
    out = FORMATS["riddles"](row, "f:1")
    assert roles(out) == [U, A, U, A] and out["messages"][3]["content"] == "It plays music."


def test_openai_messages_with_system_prompt_multi_turn():
    row = {
        "messages": [
            {"role": S, "content": "Be kind."},
            {"role": U, "content": "a"},
            {"role": A, "content": "b"},
            {"role": U, "content": "c"},
            {"role": A, "content": "d"},
        ],
        "id": 7,
    }
    assert detect_format(row) == "messages"
    assert roles(FORMATS["messages"](row, "f:1")) == [S, U, A, U, A]


def test_sharegpt_from_value_and_role_content():
    row = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "r"},
        ]
    }
    assert detect_format(row) == "sharegpt"
    assert FORMATS["sharegpt"](row, "f:1")["messages"] == [
        {"role": S, "content": "sys"},
        {"role": U, "content": "q"},
        {"role": A, "content": "r"},
    ]
    row2 = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}
    assert roles(FORMATS["sharegpt"](row2, "f:1")) == [U, A]


@pytest.mark.parametrize(
    "row, prompt",
    [
        ({"instruction": "娘娘。", "input": "", "output": "皇上万福金安。"}, "娘娘。"),  # huanhuan
        (
            {
                "instruction": "Write a sum function.",
                "input": "two ints",
                "output": "def f(a, b): return a + b",
                "prompt": "Below is an instruction...",
            },
            "Write a sum function.\n\ntwo ints",
        ),  # python_code_instructions_18k_alpaca
        (
            {"instruction": "Hi", "input": "", "output": "Hello", "text": "### Instruction: Hi ..."},
            "Hi",
        ),  # tatsu-lab/alpaca
    ],
)
def test_alpaca_shapes(row, prompt):
    assert detect_format(row) == "alpaca"
    out = FORMATS["alpaca"](row, "f:1")
    assert out["messages"] == [{"role": U, "content": prompt}, {"role": A, "content": row["output"]}]


def test_alpaca_system_field():
    out = FORMATS["alpaca"]({"system": "You are Zhen Huan.", "instruction": "q", "output": "a"}, "f:1")
    assert roles(out) == [S, U, A]


def test_guanaco_text_is_parsed_into_turns():
    row = {"text": "### Human: What is 2+2?### Assistant: 4.### Human: And 3+3?### Assistant: 6."}
    assert detect_format(row) == "guanaco"
    out = FORMATS["guanaco"](row, "f:1")
    assert out["messages"] == [
        {"role": U, "content": "What is 2+2?"},
        {"role": A, "content": "4."},
        {"role": U, "content": "And 3+3?"},
        {"role": A, "content": "6."},
    ]


def test_guanaco_trailing_unanswered_question_is_dropped_and_noted():
    out = FORMATS["guanaco"]({"text": "### Human: a### Assistant: b### Human: unanswered"}, "f:1")
    assert roles(out) == [U, A] and "trailing unanswered" in out[NOTE]
    with pytest.raises(RowError, match="must end with an assistant turn"):
        FORMATS["guanaco"]({"text": "### Human: only a question"}, "f:1")


def test_prompt_completion_and_text():
    assert detect_format({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert roles(FORMATS["prompt_completion"]({"prompt": "p", "completion": "c"}, "f:1")) == [U, A]
    assert detect_format({"text": "Once upon a time"}) == "text"
    assert FORMATS["text"]({"text": "Once upon a time"}, "f:1") == {"text": "Once upon a time"}


def test_ambiguous_or_unknown_rows_ask_for_data_format():
    with pytest.raises(DataError, match=r"\(it fits messages, prompt_completion\); set data.format"):
        detect_format({"messages": [], "prompt": "p", "completion": "c"})
    with pytest.raises(DataError, match=r"\(no known format fits\); set data.format"):
        detect_format({"question": "q", "answer": "a"})


def test_system_turn_only_first():
    row = {"messages": [{"role": U, "content": "a"}, {"role": S, "content": "x"}, {"role": A, "content": "b"}]}
    with pytest.raises(RowError, match=r"field 'messages\[1\]' is a system turn"):
        FORMATS["messages"](row, "f:1")


def test_real_guanaco_file_parses():
    from phinetune.data.readers import ReadReport, read_records

    path = realdata("datasets", "openassistant-guanaco", "openassistant_best_replies_eval.jsonl")
    report = ReadReport()
    records = read_records(str(path), report=report)
    assert report.format == "guanaco" and len(records) == 518
    assert all(r.sample["messages"][-1]["role"] == A for r in records)
    assert len(report.notes["dropped a trailing unanswered '### Human:' turn"]) == 132
