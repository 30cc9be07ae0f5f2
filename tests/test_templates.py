"""Our chat templates are the real ones, and render_sample gives the real tokenizer's own
apply_chat_template ids token for token, with the loss mask on exactly assistant content + <|end|>."""

from __future__ import annotations

import json

import pytest

from conftest import realdata
from phinetune.data.render import IGNORE, render_sample
from phinetune.models.specs import SPECS
from phinetune.models.templates import read_template

# spec key -> (tokenizer folder, where its real chat template is)
REAL = {
    "phi3-mini-4k": ("phi3-mini-4k-instruct_tokenizer", None),
    "phi3-mini-128k": ("phi3-mini-128k-instruct_tokenizer", None),
    "phi3.5-mini": ("phi3-mini-4k-instruct_tokenizer", "configs/microsoft-Phi-3.5-mini-instruct.chat_template.jinja"),
    "phi4-mini": ("phi4-mini-instruct", None),
}
CONVERSATIONS = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What has keys but no locks?"},
        {"role": "assistant", "content": "A piano."},
        {"role": "user", "content": "And hands but no arms?"},
        {"role": "assistant", "content": "A clock, ticking\nall day."},
    ],
    [
        {"role": "user", "content": "Say   spaced  words, émojis 🙂 and 数字 42."},
        {"role": "assistant", "content": " Leading space and 🙂."},
    ],
]


def real_template(spec_key: str) -> str:
    folder, template_file = REAL[spec_key]
    if template_file:
        return realdata(template_file).read_text()
    return json.loads(realdata(folder, "tokenizer_config.json").read_text())["chat_template"]


def real_tokenizer(spec_key: str):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    # The Phi-4-mini copy has vocab.json/merges.txt but no tokenizer.json, and its config.json points
    # AutoTokenizer at a remote repo; its tokenizer_config names the GPT-2 BPE class, loaded directly.
    loader = GPT2TokenizerFast if spec_key == "phi4-mini" else AutoTokenizer
    tokenizer = loader.from_pretrained(str(realdata(REAL[spec_key][0])))
    tokenizer.chat_template = real_template(spec_key)
    return tokenizer


@pytest.mark.parametrize("spec_key", list(REAL))
def test_bundled_template_is_the_real_one(spec_key):
    assert read_template(SPECS[spec_key].template).strip() == real_template(spec_key).strip()


@pytest.mark.parametrize("spec_key", list(REAL))
def test_render_matches_apply_chat_template_and_masks_assistant_turns(spec_key):
    spec, tokenizer = SPECS[spec_key], real_tokenizer(spec_key)
    eot_id = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    for messages in CONVERSATIONS:
        if spec_key == "phi3-mini-128k":  # its original template has no system role (it drops it)
            messages = [m for m in messages if m["role"] != "system"]
        rendered = render_sample(tokenizer, {"messages": messages}, max_length=4096, eot=spec.end_of_turn)
        expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        expected = expected["input_ids"] if isinstance(expected, dict) else list(expected)
        assert rendered.input_ids == expected
        runs, current = [], []
        for tid, label in zip(rendered.input_ids, rendered.labels):
            if label != IGNORE:
                assert label == tid
                current.append(tid)
            elif current:
                runs.append(current)
                current = []
        runs += [current] if current else []
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        # strip(): Phi-3's <|assistant|> (rstrip=True) swallows a reply's leading space, in the real model too
        assert [tokenizer.decode(r).strip() for r in runs] == [(a + spec.end_of_turn).strip() for a in answers]
        assert all(r[-1] == eot_id for r in runs)
