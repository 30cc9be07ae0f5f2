"""runs/held_out.py: one rule for held-out prompts: the conversation up to its last answer, and that answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from phinetune.data.readers import Record
from phinetune.runs.held_out import prompt_and_answer, prompts_of

U, A, S = ({"role": r, "content": r[0]} for r in ("user", "assistant", "system"))


def test_last_assistant_turn_is_the_reference():
    conv = [
        S,
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert prompt_and_answer(conv) == (conv[:4], "a2")


def test_no_prompt_or_no_answer_gives_none():
    assert prompt_and_answer([U]) is None
    assert prompt_and_answer([A, U]) is None  # an answer with nothing before it
    assert prompt_and_answer([]) is None


@given(st.lists(st.sampled_from(["system", "user", "assistant"]), max_size=8))
def test_prompt_never_holds_the_reference_and_ends_where_it_starts(roles):
    conv = [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]
    found = prompt_and_answer(conv)
    answers = [i for i, r in enumerate(roles) if r == "assistant"]
    if not answers or answers[-1] == 0:
        assert found is None
    else:
        prompt, ref = found
        assert ref == conv[answers[-1]]["content"] and prompt == conv[: answers[-1]]


def test_prompts_of_skips_records_without_conversations():
    recs = [
        Record({"text": "plain"}, "f:1"),
        Record({"messages": [U, A]}, "f:2"),
        Record({"messages": [U]}, "f:3"),
        Record({"messages": [U, A, U, A]}, "f:4"),
    ]
    assert prompts_of(recs, 5) == [([U], "a"), ([U, A, U], "a")]
    assert prompts_of(recs, 1) == [([U], "a")]
