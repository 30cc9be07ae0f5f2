"""The Modelfile's Go TEMPLATE renders exactly what the model's own Jinja chat template renders.

The Go side is rendered with tests/gotemplate.py (Go text/template semantics for the constructs used;
no Go toolchain or ollama binary here), the Jinja side with transformers' apply_chat_template.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gotemplate import render
from phinetune.errors import PhinetuneError
from phinetune.export.ollama import GO_TEMPLATES, go_template, modelfile
from phinetune.models.specs import GENERIC, SPECS
from phinetune.models.templates import read_template

SPEC_BY_TEMPLATE = {s.template: s for s in SPECS.values()}


@pytest.fixture(scope="module")
def tokenizer():
    from phinetune.models.tiny import build_tokenizer

    return build_tokenizer(SPECS["phi3-mini-4k"])


def jinja(tokenizer, template_file: str, messages: list[dict]) -> str:
    text = tokenizer.apply_chat_template(
        messages, chat_template=read_template(template_file), tokenize=False, add_generation_prompt=True
    )
    if template_file == "phi3-128k.jinja":
        # This template writes {{ bos_token }} itself; llama.cpp and Ollama prepend BOS from the GGUF's
        # add_bos_token instead (the Phi-3-128k tokenizer sets it), so the Go template must not repeat it.
        assert text.startswith(tokenizer.bos_token)
        text = text[len(tokenizer.bos_token) :]
    return text


def go(template_file: str, messages: list[dict]) -> str:
    spec = SPEC_BY_TEMPLATE.get(template_file)
    if spec is not None and spec.system_prompt_in_template and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": spec.system_prompt}] + messages  # what Ollama does with SYSTEM
    return render(
        GO_TEMPLATES[template_file], {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    )


CONVERSATIONS = [
    [{"role": "user", "content": "What has keys but can't open locks?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [
        {"role": "user", "content": "A riddle?"},
        {"role": "assistant", "content": "A piano.\nBecause keys."},
        {"role": "user", "content": "Another one"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  spaces  and\n\nnewlines "}],
]


@pytest.mark.parametrize("template_file", sorted(GO_TEMPLATES))
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one-turn", "system", "multi-turn", "empty-system"])
def test_go_template_matches_jinja(tokenizer, template_file, conversation):
    assert go(template_file, conversation) == jinja(tokenizer, template_file, conversation)


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}<>|"), max_size=30)
turns = st.lists(st.tuples(text, text), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(system=st.one_of(st.none(), text), turns=turns, last=text)
def test_go_template_matches_jinja_on_any_conversation(tokenizer, system, turns, last):
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": last})
    for template_file in GO_TEMPLATES:
        assert go(template_file, messages) == jinja(tokenizer, template_file, messages), template_file


def test_every_spec_has_an_ollama_template():
    assert {s.template for s in SPECS.values()} <= set(GO_TEMPLATES)


def test_modelfile_has_template_stops_and_sampling():
    spec = SPECS["phi3.5-mini"]
    text = modelfile("run-q8_0.gguf", spec, num_ctx=1024)
    assert text.startswith("FROM ./run-q8_0.gguf\n")
    assert f'TEMPLATE """{GO_TEMPLATES["phi3.5.jinja"]}"""' in text
    assert [line for line in text.splitlines() if line.startswith("PARAMETER stop")] == [
        'PARAMETER stop "<|end|>"',
        'PARAMETER stop "<|endoftext|>"',
    ]
    assert "PARAMETER num_ctx 1024" in text and "PARAMETER temperature" in text
    assert 'PARAMETER stop "<|im_end|>"' in modelfile("x.gguf", SPECS["phi2"])
    assert f'SYSTEM """{SPECS["phi4-reasoning"].system_prompt}"""' in modelfile("x.gguf", SPECS["phi4-reasoning"])
    assert "SYSTEM" not in text  # only where the chat template itself writes a default system prompt


def test_model_without_a_known_template_is_refused():
    with pytest.raises(PhinetuneError, match="no Ollama template"):
        go_template(GENERIC)
