"""render_sample places the loss mask by the template's structure, never by searching for a reply.

Property tests over random conversations on every spec's template (the tiny tokenizers and the real Phi
tokenizers shipped in tests/fixtures/realdata.tar.xz), checked against the mask written by hand from
each template's layout (tests/mask_by_hand.py); golden fixtures recorded from the real tokenizers
(tests/golden/render/, made by scripts/make_render_golden.py) so the real-tokenizer cases also run on
a fresh clone.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import realdata
from mask_by_hand import content_overlap, expected_labels, layout_text
from phinetune.data.render import IGNORE, render_sample
from phinetune.errors import DataError
from phinetune.models.specs import SPECS

GOLDEN = Path(__file__).parent / "golden" / "render"
TEMPLATES = sorted({spec.template for spec in SPECS.values()})
# one spec per template (phi3.5-moe shares Phi-3.5-mini's)
SPEC_OF_TEMPLATE = {t: next(k for k, s in SPECS.items() if s.template == t) for t in TEMPLATES}
REAL = {  # spec key -> (tokenizer folder, real chat template file or None: the tokenizer's own)
    "phi3-mini-4k": ("phi3-mini-4k-instruct_tokenizer", None),
    "phi3-mini-128k": ("phi3-mini-128k-instruct_tokenizer", None),
    "phi3.5-mini": ("phi3-mini-4k-instruct_tokenizer", "configs/microsoft-Phi-3.5-mini-instruct.chat_template.jinja"),
    "phi4-mini": ("phi4-mini-instruct", None),
    "phi2": ("phi2_tokenizer", None),
}


def tiny_tokenizer(spec_key: str):
    """The built-in tiny tokenizer of the spec's family, loaded as training loads it, with the spec's template."""
    from phinetune.config.schema import ModelConfig
    from phinetune.models.loading import load_tokenizer
    from phinetune.models.templates import read_template
    from phinetune.models.tiny import build_tokenizer

    spec = SPECS[spec_key]
    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(spec).save_pretrained(tmp)
        tokenizer = load_tokenizer(tmp, ModelConfig(name=tmp), spec)
    tokenizer.chat_template = read_template(spec.template)
    return tokenizer


def real_tokenizer(spec_key: str):
    from transformers import GPT2TokenizerFast

    from phinetune.config.schema import ModelConfig
    from phinetune.models.loading import load_tokenizer

    folder, template_file = REAL[spec_key]
    path = realdata(folder)
    if spec_key == "phi4-mini":
        # The Phi-4-mini copy has vocab.json/merges.txt but no tokenizer.json, and its config.json points
        # AutoTokenizer at a remote repo; its tokenizer_config names the GPT-2 BPE class, loaded directly.
        tokenizer = GPT2TokenizerFast.from_pretrained(str(path))
    else:
        tokenizer = load_tokenizer(
            str(path), ModelConfig(name=str(path)), SPECS[spec_key]
        )  # Phi-2: ChatML tokens added
    if template_file:
        tokenizer.chat_template = realdata(template_file).read_text()
    return tokenizer


# ---- random conversations ---------------------------------------------------------------------------

FRAGMENTS = [
    "<|end|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|end|>\n<|assistant|>\n",
    "assistant",
    "user",
    "system",
    "end",
    "im_end",
    "<|",
    "|>",
    "<",
    "|",
    "d",
    "a",
    "e",
    ">",
    "\n",
    " ",
    "\t",
    "",
    "  \n ",
    "\n\n",
    "数字",
    "日本語の文",
    "émoji 🙂",
    "Ω≈ç√",
    "x",
]
piece = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6), st.characters().map(str))
body = st.one_of(
    st.lists(piece, max_size=5).map("".join),
    st.builds(lambda s, n: s * n, st.sampled_from(["a long reply. ", "数字", " \n", "<|end|>"]), st.integers(50, 300)),
)
WRAP = ["", " ", "  ", "\n", "\n\n", " \n", "\n "]
content = st.builds(lambda a, b, c: a + b + c, st.sampled_from(WRAP), body, st.sampled_from(WRAP))


@st.composite
def conversations(draw, system: bool = True):
    messages = [{"role": "system", "content": draw(content)}] if system and draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        user = draw(content)
        reply = user if draw(st.integers(0, 5)) == 0 else draw(content)  # sometimes the reply repeats the user
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def check_conversation(tokenizer, template: str, eot: str, messages: list[dict]) -> None:
    expected_ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    assert layout_text(
        template, messages, tokenizer.bos_token or "", tokenizer.eos_token or ""
    ) == tokenizer.apply_chat_template(messages, tokenize=False), "the hand layout no longer matches the template"
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    for policy in ("assistant", "last_assistant", "all"):
        r = render_sample(tokenizer, {"messages": messages}, max_length=10**6, policy=policy, eot=eot)
        assert r.input_ids == expected_ids
        ids, trained = expected_labels(tokenizer, template, messages, policy)
        assert ids == expected_ids
        assert [label != IGNORE for label in r.labels] == trained, policy
        assert all(label == tid for label, tid in zip(r.labels, r.input_ids) if label != IGNORE)
        if policy != "all":
            assert content_overlap(tokenizer, template, messages, trained) == []
        # every assistant turn has its own end-of-turn token, and it is trained where the policy trains the turn
        assert len(r.turns) == sum(m["role"] == "assistant" for m in messages)
        assert all(r.input_ids[e] == eot_id for _, _, e in r.turns)
        chosen = r.turns[-1:] if policy == "last_assistant" else r.turns
        assert all(r.labels[e] == eot_id for _, _, e in chosen)


PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture(scope="module", params=TEMPLATES)
def tiny_case(request):
    spec_key = SPEC_OF_TEMPLATE[request.param]
    return tiny_tokenizer(spec_key), request.param, SPECS[spec_key].end_of_turn


@pytest.fixture(scope="module", params=list(REAL))
def real_case(request):
    spec = SPECS[request.param]
    return real_tokenizer(request.param), spec.template, spec.end_of_turn


@PROPERTY
@given(data=st.data())
def test_tiny_tokenizers_every_template(tiny_case, data):
    tokenizer, template, eot = tiny_case
    check_conversation(tokenizer, template, eot, data.draw(conversations(system=template != "phi3-128k.jinja")))


@PROPERTY
@given(data=st.data())
def test_real_tokenizers(real_case, data):
    tokenizer, template, eot = real_case
    check_conversation(tokenizer, template, eot, data.draw(conversations(system=template != "phi3-128k.jinja")))


ONE_LETTER = ["d", "a", "e", ">", "end", "assistant", "", " ", "\n", "  \n"]


@pytest.mark.parametrize("spec_key", list(REAL))
def test_one_letter_and_empty_replies_train_exactly_answer_and_own_eot(spec_key):
    """The reported defect: a reply of `d` was found inside the user turn's `<|end|>`."""
    tokenizer, spec = real_tokenizer(spec_key), SPECS[spec_key]
    for answer in ONE_LETTER:
        messages = [
            {"role": "user", "content": "Which letter? a, b, c or d"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": answer},
            {"role": "assistant", "content": answer},
        ]
        check_conversation(tokenizer, spec.template, spec.end_of_turn, messages)


# ---- golden fixtures from the real tokenizers (run on a fresh clone) -------------------------------


class ReplayTokenizer:
    """The real tokenizer's recorded encodings, replayed: the chat template is rendered by transformers'
    own jinja renderer, each text it produces is looked up in the fixture (a text the fixture lacks fails)."""

    def __init__(self, fixture: dict):
        self.chat_template, self.bos_token, self.eos_token = (
            fixture["chat_template"],
            fixture["bos_token"],
            fixture["eos_token"],
        )
        self.unk_token_id = fixture["unk_token_id"]
        self.vocab = fixture["tokens"]
        self.encodings = fixture["encodings"]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        from transformers.utils.chat_template_utils import render_jinja_template

        assert not tokenize
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        return rendered[0]

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        assert not add_special_tokens
        if text not in self.encodings:
            raise AssertionError(
                f"the golden fixture lacks the tokenization of {text!r}; regenerate: python scripts/make_render_golden.py"
            )
        enc = self.encodings[text]
        return {"input_ids": enc["ids"], "offset_mapping": [tuple(o) for o in enc["offsets"]]}

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, self.unk_token_id)

    def convert_ids_to_tokens(self, tid):
        return next((t for t, i in self.vocab.items() if i == tid), None)


GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))


def test_golden_fixtures_cover_every_phi_tokenizer():
    assert {p.stem for p in GOLDEN_FILES} == set(REAL)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_fixture(path):
    fixture = json.loads(path.read_text())
    tokenizer = ReplayTokenizer(fixture)
    for case in fixture["cases"]:
        for policy, labels in case["labels"].items():
            r = render_sample(
                tokenizer, {"messages": case["messages"]}, max_length=10**6, policy=policy, eot=fixture["eot"]
            )
            assert r.input_ids == case["ids"], case["messages"]
            assert r.labels == labels, (policy, case["messages"])


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_one_letter_answers_train_the_letter_and_its_own_eot(path):
    """Read straight off the fixture: the trained tokens of each one-letter conversation, in order."""
    fixture = json.loads(path.read_text())
    eot_id = fixture["tokens"][fixture["eot"]]
    for case in fixture["cases"]:
        answers = [m["content"] for m in case["messages"] if m["role"] == "assistant"]
        if not all(a in ("d", "a", "e", ">") for a in answers):
            continue
        trained = [t for t in case["labels"]["assistant"] if t != IGNORE]
        assert trained[1::2] == [eot_id] * len(answers)  # letter, <|end|>, letter, <|end|>
        assert len(trained) == 2 * len(answers)


# ---- templates that drop or rewrite messages ---------------------------------------------------------


def test_system_message_refused_on_phi3_128k_with_the_fold_option_named():
    tokenizer = tiny_tokenizer("phi3-mini-128k")
    messages = [
        {"role": "system", "content": "Answer with one letter."},
        {"role": "user", "content": "a or b?"},
        {"role": "assistant", "content": "a"},
    ]
    with pytest.raises(DataError, match=r"drops system messages.*data\.fold_system=true"):
        render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>")
    folded = render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>", fold_system=True)
    expected = [
        {"role": "user", "content": "Answer with one letter.\n\na or b?"},
        {"role": "assistant", "content": "a"},
    ]
    assert folded.input_ids == list(tokenizer.apply_chat_template(expected, tokenize=True, return_dict=False))
    assert "Answer with one letter.\n\na or b?" in folded.text
    ids, trained = expected_labels(tokenizer, "phi3-128k.jinja", expected, "assistant")
    assert [label != IGNORE for label in folded.labels] == trained


def test_fold_system_leaves_conversations_without_system_alone():
    tokenizer = tiny_tokenizer("phi3-mini-4k")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert (
        render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>", fold_system=True).input_ids
        == render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>").input_ids
    )


def test_a_trimming_template_trains_the_trimmed_reply():
    """The stated rule: what is trained is what the template renders for the reply."""
    tokenizer = tiny_tokenizer("phi3-mini-4k")
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    messages = [{"role": "user", "content": "  q  "}, {"role": "assistant", "content": "  spaced out  \n"}]
    r = render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>")
    assert tokenizer.decode([t for t in r.labels if t != IGNORE]) == "spaced out<|end|>"


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = tiny_tokenizer("phi3-mini-4k")
    # renders an assistant turn only when it is the last message (like templates that drop past reasoning)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(DataError, match="assistant turn 1"):
        render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>")


def test_truncation_keeps_the_untruncated_turn_positions():
    tokenizer = tiny_tokenizer("phi3-mini-4k")
    messages = [{"role": "user", "content": "q " * 20}, {"role": "assistant", "content": "answer " * 20}]
    full = render_sample(tokenizer, {"messages": messages}, 10**6, eot="<|end|>")
    cut = render_sample(tokenizer, {"messages": messages}, len(full.input_ids) - 3, eot="<|end|>")
    assert cut.truncated and cut.turns == full.turns and cut.full_length == len(full.input_ids)
    assert cut.labels == full.labels[: len(cut.input_ids)]


def test_plain_text_samples_train_every_token_and_end_with_eos():
    tokenizer = tiny_tokenizer("phi3-mini-4k")
    r = render_sample(tokenizer, {"text": "just text"}, 512, policy="assistant", eot="<|end|>")
    assert r.labels == r.input_ids and r.input_ids[-1] == tokenizer.eos_token_id and r.turns == []
