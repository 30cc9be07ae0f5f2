"""GRPO reward functions: built-ins on the riddles' phrasing, dotted paths, and guard rails that name the culprit."""

from __future__ import annotations

import sys

import pytest

from phinetune.config import load_config
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.train.objectives.rewards import Rewards, contains_answer, exact_answer, extract_answer


def _rewards(tmp_path, monkeypatch, code: str, *extra: str) -> Rewards:
    (tmp_path / "myrewards.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myrewards", None)
    return Rewards(load_config(None, ["grpo.rewards=[myrewards:fn]", *extra]).grpo)


def test_exact_answer_compares_the_short_answers():
    ref = "The answer is a piano. Its keys play music, but they never open a door."
    assert extract_answer(ref) == "piano"
    assert exact_answer("the answer is A Piano!", ref) == 1.0
    assert exact_answer("The answer is a piano bench.", ref) == 0.0
    assert exact_answer("", ref) == 0.0
    assert contains_answer("I think it is a piano, yes", ref) == 1.0
    assert contains_answer("pianos", ref) == 0.0


def test_format_and_length_builtins_read_the_config():
    r = Rewards(
        load_config(
            None, ["grpo.rewards=[format,length]", "grpo.target_length=4", "grpo.format_regex=^The answer"]
        ).grpo
    )
    assert r.score("The answer is x", "", [], "f:1") == pytest.approx(1.0 + 1.0)
    assert r.score("no", "", [], "f:1") == pytest.approx(0.0 + 0.25)


def test_a_dotted_path_reward_gets_only_the_arguments_it_names(tmp_path, monkeypatch):
    r = _rewards(
        tmp_path,
        monkeypatch,
        "def fn(completion, answer):\n    return len(completion) - len(answer)\n",
        "grpo.reward_weights=[0.5]",
    )
    assert r.score("abcd", "ab", [{"role": "user", "content": "q"}], "d.jsonl:3") == 1.0


@pytest.mark.parametrize(
    "body,needle",
    [
        (
            "raise KeyError('oops')",
            r"reward function myrewards:fn raised KeyError: 'oops' on sample d.jsonl:7 \(completion 'hello'\)",
        ),
        (
            "return 'high'",
            r"reward function myrewards:fn returned 'high' on sample d.jsonl:7 .*must be a finite number",
        ),
        ("return float('nan')", r"returned nan on sample d.jsonl:7"),
        ("return None", r"returned None on sample d.jsonl:7"),
    ],
)
def test_a_bad_reward_names_the_function_and_the_sample(tmp_path, monkeypatch, body, needle):
    r = _rewards(tmp_path, monkeypatch, f"def fn(completion):\n    {body}\n")
    with pytest.raises(PhinetuneError, match=needle):
        r.score("hello", "ref", [], "d.jsonl:7")


def test_unknown_rewards_are_config_errors():
    with pytest.raises(ConfigError, match="neither a built-in"):
        Rewards(load_config(None, ["grpo.rewards=[exactt]"]).grpo)
    with pytest.raises(ConfigError, match="cannot load 'nopkg.mod:fn'"):
        Rewards(load_config(None, ["grpo.rewards=[nopkg.mod:fn]"]).grpo)
    with pytest.raises(ConfigError, match="2 weights for 1 reward"):
        Rewards(load_config(None, ["grpo.reward_weights=[1,2]"]).grpo)
