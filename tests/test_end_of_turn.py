"""data/end_of_turn.end_of_turn: the one end-of-turn rule every verb uses (spec, else the template's, else eos)."""

from __future__ import annotations

from phinetune.data.end_of_turn import end_of_turn
from phinetune.models.specs import GENERIC, SPECS
from test_render import tiny_tokenizer


def test_the_spec_decides_when_there_is_one():
    assert end_of_turn(tiny_tokenizer("phi3-mini-4k"), SPECS["phi3-mini-4k"]) == "<|end|>"
    assert end_of_turn(tiny_tokenizer("phi2"), SPECS["phi2"]) == "<|im_end|>"


def test_without_a_spec_it_is_read_off_the_template_structure():
    chatml = tiny_tokenizer("phi2")  # ChatML tokens added, ChatML template
    assert end_of_turn(chatml, GENERIC) == "<|im_end|>"
    phi4 = tiny_tokenizer("phi4-mini")
    assert end_of_turn(phi4, GENERIC) == "<|end|>"


def test_without_a_template_it_is_eos():
    tokenizer = tiny_tokenizer("phi3-mini-4k")
    tokenizer.chat_template = None
    assert end_of_turn(tokenizer, GENERIC) == tokenizer.eos_token
