"""Reasoning traces: trained by default, untrained with data.reasoning=answer (only the final answer and
its end-of-turn learn), counted by data inspect, and split off generated replies as vLLM does."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phinetune.config.schema import DataConfig
from phinetune.data.dataset import render_at
from phinetune.data.formats import messages as read_messages
from phinetune.data.readers import Record
from phinetune.data.reasoning import mask_traces, split_reasoning, trace_positions
from phinetune.data.render import IGNORE, render_sample
from phinetune.models.specs import SPECS
from phinetune.models.tiny import build_tokenizer

SPEC = SPECS["phi4-reasoning"]
TOK = build_tokenizer(SPEC)  # <think>/</think> are single (added) tokens, as in the real model


def record(trace: str, answer: str, inline: bool = False) -> Record:
    turn = (
        {"role": "assistant", "content": f"<think>{trace}</think>{answer}"}
        if inline
        else {"role": "assistant", "reasoning": trace, "content": answer}
    )
    return Record(read_messages({"messages": [{"role": "user", "content": "Why?"}, turn]}, "r.jsonl:1"), "r.jsonl:1")


def trained_text(rendered) -> str:
    return TOK.decode([t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE])


@pytest.mark.parametrize("inline", [False, True])
def test_trace_is_trained_by_default_and_masked_on_request(inline):
    rec = record("Because the sky scatters blue light.", "Rayleigh scattering.", inline)
    full = render_at(rec, TOK, DataConfig(reasoning="train", max_length=4096), "<|im_end|>", SPEC)
    answer = render_at(rec, TOK, DataConfig(reasoning="answer", max_length=4096), "<|im_end|>", SPEC)
    assert full.input_ids == answer.input_ids  # the same tokens; only the labels differ
    assert trained_text(full) == "<think>Because the sky scatters blue light.</think>Rayleigh scattering.<|im_end|>"
    assert trained_text(answer) == "Rayleigh scattering.<|im_end|>"


def test_the_system_prompt_quoting_think_is_never_taken_for_a_trace():
    rec = record("T", "A")
    rendered = render_at(rec, TOK, DataConfig(max_length=4096), "<|im_end|>", SPEC)
    assert "<think> {Thought section} </think>" in rendered.text  # Phi-4-reasoning's own system prompt
    inside = trace_positions(rendered, TOK, SPEC.reasoning_tags)
    assert TOK.decode([rendered.input_ids[i] for i in inside]) == "<think>T</think>"


text = st.text(st.characters(codec="utf-8", exclude_characters="<>\x00"), min_size=1, max_size=40).filter(
    lambda s: s.strip()
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=text, answer=text)
def test_answer_mode_trains_exactly_the_answer_and_end_of_turn(trace, answer):
    rendered = render_sample(
        TOK,
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": f"<think>{trace}</think>{answer}"},
            ]
        },
        max_length=4096,
        eot="<|im_end|>",
    )
    masked = mask_traces(rendered, TOK, SPEC.reasoning_tags)
    assert trained_text(masked) == answer + "<|im_end|>"
    n_trace = len(trace_positions(rendered, TOK, SPEC.reasoning_tags))
    assert (
        rendered.n_trained - masked.n_trained
        == n_trace
        == len(TOK(f"<think>{trace}</think>", add_special_tokens=False)["input_ids"])
    )


def test_data_inspect_reports_the_trace_share(tmp_path):
    from phinetune.data.inspect import inspect_data

    path = tmp_path / "r.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "reasoning": "abc def", "content": "ok"},
            ]
        },
        {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "plain"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ins = inspect_data(DataConfig(train=str(path), cache=False, max_length=4096), TOK, "<|im_end|>", spec=SPEC)
    expected = len(TOK("<think>abc def</think>", add_special_tokens=False)["input_ids"])
    assert ins.trace_trained == expected and ins.summary()["reasoning_share_of_trained"] == round(
        expected / ins.trained, 4
    )
    masked = inspect_data(
        DataConfig(train=str(path), cache=False, reasoning="answer", max_length=4096), TOK, "<|im_end|>", spec=SPEC
    )
    assert masked.trace_trained == 0 and masked.trained == ins.trained - expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("<think>step 1\nstep 2</think>\n\nThe answer is 4.", ("step 1\nstep 2", "The answer is 4.")),
        ("step 1</think>4", ("step 1", "4")),  # the prompt opened the trace
        ("Just 4.", (None, "Just 4.")),
        ("<think>unfinished", (None, "<think>unfinished")),  # cut off by max_tokens: nothing to split yet
    ],
)
def test_split_reasoning(reply, expected):
    assert split_reasoning(reply, ("<think>", "</think>")) == expected
