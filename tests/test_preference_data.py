"""Preference data: every layout reads to the same pair, bad rows name file:line, the shared prompt is checked."""

from __future__ import annotations

import json

import pytest

from phinetune.data.preference import PrefInfo, prompt_length, read_preferences, render_pair, render_preferences
from phinetune.data.render import IGNORE
from phinetune.errors import DataError

USER, GOOD, BAD = "What has keys but no locks?", "The answer is a piano.", "The answer is a door."
LAYOUTS = {
    "trl_plain": {"prompt": USER, "chosen": GOOD, "rejected": BAD},
    "trl_conversational": {
        "prompt": [{"role": "user", "content": USER}],
        "chosen": [{"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "assistant", "content": BAD}],
    },
    "messages": {"messages": [{"role": "user", "content": USER}], "chosen": GOOD, "rejected": BAD},
    "ultrafeedback": {
        "prompt": USER,
        "chosen": [{"role": "user", "content": USER}, {"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "user", "content": USER}, {"role": "assistant", "content": BAD}],
    },
    "anthropic_hh": {
        "chosen": f"\n\nHuman: {USER}\n\nAssistant: {GOOD}",
        "rejected": f"\n\nHuman: {USER}\n\nAssistant: {BAD}",
    },
}


def _write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_reads_to_the_same_pair(tmp_path, layout):
    (rec,) = read_preferences(_write(tmp_path, [LAYOUTS[layout]]), "pairs")
    assert rec.prompt == [{"role": "user", "content": USER}]
    assert (rec.chosen, rec.rejected) == (GOOD, BAD)
    assert rec.where.endswith("p.jsonl:1")


@pytest.mark.parametrize(
    "row,needle",
    [
        ({"prompt": USER, "chosen": GOOD}, "needs 'chosen' and 'rejected'"),
        ({"prompt": USER, "chosen": GOOD, "rejected": ""}, "field 'rejected' is empty"),
        ({"prompt": USER, "chosen": 3, "rejected": BAD}, "field 'chosen' must be a string"),
        (
            {
                "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": GOOD}],
                "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": BAD}],
            },
            "share every turn but the last",
        ),
        (
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": GOOD, "rejected": BAD},
            "must end with a user turn",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, needle):
    path = _write(tmp_path, [LAYOUTS["trl_plain"], row])
    with pytest.raises(DataError, match=needle) as info:
        read_preferences(path, "pairs")
    assert f"{path}:2" in str(info.value)


def test_kto_rows_need_a_boolean_label_and_both_kinds(tmp_path):
    ok = [{"prompt": USER, "completion": GOOD, "label": True}, {"prompt": USER, "completion": BAD, "label": False}]
    recs = read_preferences(_write(tmp_path, ok), "kto")
    assert [r.desirable for r in recs] == [True, False] and recs[1].rejected is None
    with pytest.raises(DataError, match=r"k.jsonl:2: field 'label' must be true"):
        read_preferences(_write(tmp_path, [ok[0], {**ok[1], "label": "no"}], "k.jsonl"), "kto")
    with pytest.raises(DataError, match="needs both desirable and undesirable"):
        read_preferences(_write(tmp_path, [ok[0], ok[0]], "one.jsonl"), "kto")


def test_pair_renders_share_the_prompt_token_for_token_and_train_each_eot(tiny_phi3):
    _, tok = tiny_phi3
    sample = render_pair(tok, [{"role": "user", "content": USER}], GOOD, BAD, "x:1", 256, "<|end|>")
    n = sample.prompt_tokens
    # The prompt, built independently: the template's generation prompt is exactly what precedes each reply.
    prompt_ids = tok(
        tok.apply_chat_template([{"role": "user", "content": USER}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )["input_ids"]
    assert sample.chosen.input_ids[:n] == sample.rejected.input_ids[:n] == prompt_ids
    eot = tok.convert_tokens_to_ids("<|end|>")
    for r, text in ((sample.chosen, GOOD), (sample.rejected, BAD)):
        trained = [t for t in r.labels if t != IGNORE]
        assert trained[-1] == eot, "the reply's end-of-turn token must be trained"
        assert tok.decode(trained[:-1]).strip() == text
        assert all(x == IGNORE for x in r.labels[:n])


def test_a_prompt_that_renders_differently_is_refused(tiny_phi3, monkeypatch):
    _, tok = tiny_phi3
    import phinetune.data.preference as pref

    real = pref.render_sample
    calls = []

    def skewed(tokenizer, sample, *a, **k):  # the second reply's render gets a different system prompt
        calls.append(1)
        if len(calls) == 2:
            sample = {"messages": [{"role": "system", "content": "other"}] + sample["messages"]}
        return real(tokenizer, sample, *a, **k)

    monkeypatch.setattr(pref, "render_sample", skewed)
    with pytest.raises(DataError, match=r"f.jsonl:3: the prompt renders to different tokens"):
        render_pair(tok, [{"role": "user", "content": USER}], GOOD, BAD, "f.jsonl:3", 256, "<|end|>")


def test_truncation_that_removes_a_reply_is_counted_not_trained(tiny_phi3):
    _, tok = tiny_phi3
    recs = read_preferences("builtin:riddles_preferences", "pairs", limit=3)
    info = PrefInfo()
    short = prompt_length(render_pair(tok, recs[0].prompt, recs[0].chosen, recs[0].rejected, "", 512, "<|end|>").chosen)
    out = render_preferences(recs, tok, short, "<|end|>", info)
    assert len(out) + len(info.skipped) == 3 and info.skipped and "no reply token left" in info.skipped[0]


def test_data_inspect_reports_reply_lengths_length_bias_and_overlap(tmp_path):
    from conftest import cli_here

    rows = [
        {"prompt": USER, "chosen": GOOD + " It has many keys.", "rejected": BAD},
        {"prompt": "Why?", "chosen": "Because.", "rejected": "Because."},
    ]
    path = _write(tmp_path, rows)
    cli_here("data", "inspect", path, "--model", "tiny-phi3", "--objective", "dpo", "--out", str(tmp_path / "o"))
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["usable"] == 2 and report["identical_pairs"] == 1 and report["chosen_longer_share"] == 0.5
    assert report["word_overlap"]["max"] == 1.0  # the identical pair
    assert report["chosen_tokens"]["max"] > report["rejected_tokens"]["max"]
    bad = cli_here(
        "data",
        "inspect",
        _write(tmp_path, [{"prompt": USER, "chosen": GOOD}], "b.jsonl"),
        "--model",
        "tiny-phi3",
        "--objective",
        "dpo",
        "--out",
        str(tmp_path / "b"),
        check=False,
    )
    assert bad.returncode == 2 and "b.jsonl:1" in bad.stdout + bad.stderr


def test_prompts_take_the_specs_default_system_prompt_as_sft_does(tmp_path):
    """A Phi-4-mini-reasoning pair is trained on the prompt SFT and inference write (its model card's system
    prompt first), not on the bare user turn; a conversation with its own system turn keeps it."""
    from phinetune.data.normalize import for_template
    from phinetune.data.preference import in_template_form
    from phinetune.models.specs import get_spec

    spec = get_spec("microsoft/Phi-4-mini-reasoning")
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": USER}]
    recs = read_preferences(
        _write(tmp_path, [LAYOUTS["messages"], {"messages": own, "chosen": GOOD, "rejected": BAD}]), "pairs"
    )
    bare, kept = in_template_form(recs, spec)
    assert bare.prompt == [{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": USER}]
    assert kept.prompt == own
    sft = for_template({"messages": [{"role": "user", "content": USER}, {"role": "assistant", "content": GOOD}]}, spec)
    assert sft["messages"][:-1] == bare.prompt  # the very prompt an SFT run on the same conversation renders
    assert (bare.chosen, bare.rejected, bare.where) == (recs[0].chosen, recs[0].rejected, recs[0].where)
