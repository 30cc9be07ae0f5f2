"""End of turn and pad, for every spec: the end-of-turn token is the one the template writes after an
assistant reply, pad is a different token, the Phi-4 pitfalls (pad = eos, eos not closing turns) are fixed,
and an unknown checkpoint gets its end-of-turn read off its template or a clear error naming model.end_of_turn."""

from __future__ import annotations

import json

import pytest

from conftest import realdata
from phinetune.config.schema import ModelConfig
from phinetune.data.end_of_turn import end_of_turn
from phinetune.errors import ConfigError
from phinetune.models.loading import load_tokenizer
from phinetune.models.pad import FALLBACK_PAD, fix_pad
from phinetune.models.specs import GENERIC, SPECS
from phinetune.models.tiny import build_tokenizer


def loaded(spec, tmp_path, tokenizer=None, **cfg):
    (tokenizer or build_tokenizer(spec)).save_pretrained(tmp_path)
    return load_tokenizer(str(tmp_path), ModelConfig(name=str(tmp_path), **cfg), spec)


@pytest.mark.parametrize("key", list(SPECS))
def test_every_spec_closes_turns_with_its_end_of_turn_and_pads_with_another_token(key, tmp_path):
    spec = SPECS[key]
    tok = loaded(spec, tmp_path)
    eot = end_of_turn(tok, spec)
    assert eot == spec.end_of_turn == end_of_turn(tok, GENERIC)  # the template itself writes it after a reply
    eot_id = tok.convert_tokens_to_ids(eot)
    assert tok.encode(eot, add_special_tokens=False) == [eot_id]  # one token, so it can be trained
    assert tok.pad_token_id is not None and tok.pad_token_id != eot_id


def test_phi4_ships_pad_equal_to_eos_and_is_given_its_dummy_pad(tmp_path):
    spec = SPECS["phi4"]
    raw = build_tokenizer(spec)
    assert raw.pad_token == raw.eos_token == "<|endoftext|>" != spec.end_of_turn  # the shipped pitfall, mirrored
    tok = loaded(spec, tmp_path, raw)
    assert tok.pad_token == "<|dummy_85|>" and tok.eos_token == "<|endoftext|>"
    assert end_of_turn(tok, spec) == "<|im_end|>"


def test_real_phi4_mini_tokenizer_keeps_a_distinct_pad():
    from transformers import GPT2TokenizerFast

    folder = realdata("phi4-mini-instruct")
    tok = GPT2TokenizerFast.from_pretrained(str(folder))
    tok.chat_template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    spec = SPECS["phi4-mini"]
    assert end_of_turn(tok, GENERIC) == "<|end|>" and tok.eos_token == "<|endoftext|>"  # eos does not close turns
    assert fix_pad(tok, spec, end_of_turn(tok, spec)) is None
    assert tok.pad_token_id == 199999 and tok.convert_tokens_to_ids("<|end|>") == 200020


CHATML_SEP = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '<|im_sep|>' + m['content'] + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)


def test_unknown_checkpoint_gets_the_end_of_turn_its_template_writes(tmp_path):
    tok = build_tokenizer(SPECS["phi4"])  # eos <|endoftext|>, turns closed by <|im_end|>
    tok.chat_template = CHATML_SEP
    tok = loaded(GENERIC, tmp_path, tok)
    assert end_of_turn(tok, GENERIC) == "<|im_end|>" != tok.eos_token
    assert tok.pad_token_id != tok.convert_tokens_to_ids("<|im_end|>")


def test_unknown_checkpoint_with_no_closing_token_names_the_field(tmp_path):
    tok = build_tokenizer(SPECS["phi4"])
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    tok = loaded(GENERIC, tmp_path, tok)
    with pytest.raises(ConfigError, match="set model.end_of_turn"):
        end_of_turn(tok, GENERIC)
    assert end_of_turn(tok, GENERIC, "<|im_end|>") == "<|im_end|>"


def test_configured_end_of_turn_must_be_one_token(tmp_path):
    tok = loaded(SPECS["phi3-mini-4k"], tmp_path)
    with pytest.raises(ConfigError, match=r"model.end_of_turn='<\|nope\|> and more' is not a single token"):
        end_of_turn(tok, SPECS["phi3-mini-4k"], "<|nope|> and more")


def test_pad_equal_to_end_of_turn_is_replaced(tmp_path):
    # A checkpoint whose eos closes turns and has no pad: pad = eos would be the end-of-turn token.
    tok = build_tokenizer(SPECS["phi4"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    tok.pad_token = None
    tok.unk_token = tok.eos_token
    note = fix_pad(tok, GENERIC, end_of_turn(tok, GENERIC))
    assert end_of_turn(tok, GENERIC) == tok.eos_token
    assert tok.pad_token == FALLBACK_PAD and tok.pad_token_id != tok.eos_token_id and "pad must differ" in note
