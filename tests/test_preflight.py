"""The pre-flight report: per layer type, trainable share, the rendered sample with its mask, the
end-of-turn check, the dtype plan; `phinetune check`; RUN/preflight.json."""

from __future__ import annotations

import json
import re

import pytest

from conftest import cli_here
from phinetune.config import load_config
from phinetune.data.dataset import prepare_data
from phinetune.models.loading import choose_dtype
from phinetune.models.specs import SPECS
from phinetune.train.adapter import apply_adapter
from phinetune.train.preflight import check

FAST = ["data.limit=12", "data.eval_size=2"]


def test_report_contents(tiny_phi3):
    model, tokenizer = tiny_phi3
    spec = SPECS["phi3-mini-4k"]
    cfg = load_config(None, ["model.name=tiny-phi3", *FAST, "adapter.targets=attention", "adapter.r=4"])
    data = prepare_data(cfg.data, tokenizer, spec.end_of_turn)
    import copy

    peft_model = apply_adapter(copy.deepcopy(model), spec, cfg.adapter, cfg.model, tokenizer, cfg.preflight)
    report = check(cfg, spec, peft_model, tokenizer, data, choose_dtype("fp32", spec))
    assert report.problems == []
    rows = {(r.layer_type, r.kind): r for r in report.layers}
    assert set(rows) == {("layers.*.self_attn.qkv_proj", "lora"), ("layers.*.self_attn.o_proj", "lora")}
    assert rows[("layers.*.self_attn.o_proj", "lora")].trainable == 2 * 4 * (128 + 128)  # 2 layers x r*(in+out)
    assert report.trainable == sum(r.trainable for r in report.layers) and 0 < report.share < 5
    assert report.not_adapted == ["gate_up_proj", "down_proj"]
    assert report.eot_trained and report.eot_samples == (12, 12)  # train + eval, each keeps its last end-of-turn
    assert (
        report.eot_turns == (report.coverage["turns"], report.coverage["turns"]) and report.coverage["violations"] == []
    )
    trained = "".join(t for t, on in report.sample if on)
    assert trained.endswith("<|end|>") and "<|user|>" not in trained and "<|assistant|>" not in trained
    assert report.dtype["dtype"] == "fp32"


def test_check_cli_passes_and_shows_the_mask():
    out = cli_here("check", "model.name=tiny-phi3", *FAST).stdout
    assert "layers.*.self_attn.qkv_proj" in out and "trainable parameters:" in out
    assert "[[" in out and "<|end|>]]" in out and "pre-flight passed" in out


def test_check_cli_fails_on_the_seed_list():
    proc = cli_here(
        "check",
        "model.name=tiny-phi3",
        *FAST,
        "adapter.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        check=False,
    )
    assert proc.returncode == 2
    assert "'q_proj' matches nothing in phi3-mini-4k; in phi3-mini-4k that is qkv_proj" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_cli_fails_when_end_of_turn_is_cut_off():
    # Empty samples are allowed here, so the one failure left is the one this test is about.
    proc = cli_here(
        "check", "model.name=tiny-phi3", *FAST, "data.max_length=24", "preflight.allow_empty_samples=true", check=False
    )
    assert proc.returncode == 2 and "pre-flight failed" in proc.stdout
    assert "the end-of-turn token <|end|> is never trained" in proc.stdout and "allow_untrained_eot" in proc.stdout
    assert "have no trained tokens" not in proc.stdout


def test_train_saves_preflight_json(tiny_run):
    from phinetune.runs.folders import open_run

    saved = json.loads(open_run(tiny_run).preflight.read_text())  # the session's shared run
    assert saved["problems"] == [] and saved["trainable"] > 0 and 0 < saved["share_percent"] < 100
    assert {row["layer_type"] for row in saved["layers"]} >= {"layers.*.self_attn.qkv_proj", "embed_tokens", "lm_head"}
    assert saved["eot_trained"] and any(on for _, on in saved["sample"])


def test_sample_preview_keeps_non_ascii_characters_whole():
    """Byte-level BPE splits é, 猫 and emoji over several tokens: the preview must decode runs, not tokens."""
    from phinetune.data.render import IGNORE, Rendered
    from phinetune.models.tiny import build_tokenizer
    from phinetune.train.preflight import mask_pieces

    tok = build_tokenizer(SPECS["phi3-mini-4k"])
    prompt, answer = "Qu'est-ce que c'est ? ", "Schrödinger's 猫 dit 👋 — déjà vu"
    p_ids, a_ids = tok(prompt, add_special_tokens=False).input_ids, tok(answer, add_special_tokens=False).input_ids
    assert any("\ufffd" in tok.decode([t]) for t in a_ids)  # the bug's precondition: single tokens are partial bytes
    pieces = mask_pieces(Rendered(p_ids + a_ids, [IGNORE] * len(p_ids) + a_ids, prompt + answer), tok)
    assert pieces == [(tok.decode(p_ids), False), (tok.decode(a_ids), True)]
    assert "\ufffd" not in "".join(text for text, _ in pieces) and answer in "".join(text for text, _ in pieces)


# ---- per-turn end-of-turn coverage (data/coverage.py) ------------------------------------------------


def _data(samples, cfg):
    from phinetune.data.dataset import DataInfo, PreparedData

    return PreparedData(samples, [], [], DataInfo())


def test_a_mis_placed_mask_is_an_error_naming_file_line_and_turn(tiny_phi3):
    """What the old text search did with a reply of `d`: the user's <|end|> trained, the reply's own not."""
    from phinetune.data.render import IGNORE, render_sample
    from phinetune.train.preflight import PreflightReport, eot_report

    _, tokenizer = tiny_phi3
    spec, cfg = SPECS["phi3-mini-4k"], load_config(None, [])
    messages = [{"role": "user", "content": "a, b, c or d?"}, {"role": "assistant", "content": "d"}]
    good = render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>")
    good.where = "mc.jsonl:3"
    eot_id = tokenizer.convert_tokens_to_ids("<|end|>")
    bad = render_sample(tokenizer, {"messages": messages}, 512, eot="<|end|>")
    bad.where = "mc.jsonl:4"
    user_end = bad.input_ids.index(eot_id)  # the user turn's <|end|>, before the reply
    own = bad.turns[0][2]
    bad.labels[user_end], bad.labels[own] = eot_id, IGNORE
    report = PreflightReport()
    eot_report(tokenizer, spec, cfg, _data([good, bad], cfg), report)
    assert report.eot_turns == (1, 2)
    assert (
        f"mc.jsonl:4: assistant turn 1: its own end-of-turn token <|end|> (position {own}) is not trained"
        in report.problems
    )
    assert (
        f"mc.jsonl:4: 1 token(s) trained outside the assistant turns (first at position {user_end}, policy assistant)"
        in report.problems
    )
    assert not any("mc.jsonl:3" in p for p in report.problems)


def test_too_few_samples_keeping_their_last_eot_refuses_and_names_the_max_length(tiny_phi3, tmp_path):
    import math

    from phinetune.train.preflight import PreflightReport, eot_report

    _, tokenizer = tiny_phi3
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": "word " * (3 * i + 1)},
            ]
        }
        for i in range(20)
    ]
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eot_id = tokenizer.convert_tokens_to_ids("<|end|>")
    # independent: where apply_chat_template puts each conversation's last <|end|>
    needed = sorted(
        max(
            i
            for i, t in enumerate(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False))
            if t == eot_id
        )
        + 1
        for r in rows
    )
    expected = needed[math.ceil(0.95 * len(needed)) - 1]
    for max_length, refused in ((needed[10], True), (expected, False)):
        cfg = load_config(
            None, [f"data.train={path}", f"data.max_length={max_length}", "data.cache=false", "data.eval_size=2"]
        )
        report = PreflightReport()
        eot_report(tokenizer, SPECS["phi3-mini-4k"], cfg, prepare_data(cfg.data, tokenizer, "<|end|>"), report)
        assert any(f"data.max_length={expected} keeps 95%" in p for p in report.problems) == refused, report.problems
    cfg = load_config(
        None,
        [
            f"data.train={path}",
            f"data.max_length={needed[10]}",
            "data.cache=false",
            "data.eval_size=2",
            "preflight.min_eot_share=0",
        ],
    )
    report = PreflightReport()
    eot_report(tokenizer, SPECS["phi3-mini-4k"], cfg, prepare_data(cfg.data, tokenizer, "<|end|>"), report)
    assert not any("min_eot_share" in p for p in report.problems)


def test_guanaco_at_256_tokens_is_refused_with_the_max_length_that_keeps_95_percent():
    """The issue's case: at max_length=256 most guanaco samples lose their last <|end|>."""
    from conftest import realdata
    from phinetune.train.preflight import PreflightReport, eot_report
    from test_render import real_tokenizer

    path = realdata("datasets", "openassistant-guanaco", "openassistant_best_replies_eval.jsonl")
    tokenizer = real_tokenizer("phi3-mini-4k")

    def share_at(max_length):
        cfg = load_config(None, [f"data.train={path}", f"data.max_length={max_length}", "data.cache=false"])
        report = PreflightReport()
        eot_report(tokenizer, SPECS["phi3-mini-4k"], cfg, prepare_data(cfg.data, tokenizer, "<|end|>"), report)
        with_eot, chat = report.eot_samples
        return with_eot / chat, report

    share_256, report = share_at(256)
    assert any("data.max_length=256, below preflight.min_eot_share=0.95" in p for p in report.problems)
    share_suggested, report = share_at(report.max_length_for_share)
    assert report.problems == []
    shares = {256: share_256, None: share_suggested}
    assert shares[256] < 0.5 and shares[None] >= 0.95


NEW_TINY = ["tiny-phi4-14b", "tiny-phi4-reasoning", "tiny-phi4-mini-reasoning", "tiny-phi3-medium"]


@pytest.mark.parametrize("name", NEW_TINY)
def test_check_on_each_new_phi_family_tiny_model(name):
    """The right targets, and an end-of-turn token that is trained and distinct from pad."""
    from phinetune.models.specs import get_spec
    from phinetune.train.check import check_config

    cfg = load_config(None, [f"model.name={name}", *FAST, "data.max_length=2048", "model.dtype=fp32"])
    report = check_config(cfg)
    spec = get_spec(name)
    assert report.problems == []
    assert {r.layer_type for r in report.layers if r.kind == "lora"} == {
        f"layers.*.{t}" for t in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    }
    assert report.eot_token == spec.end_of_turn and report.eot_trained
    assert report.eot_samples[0] == report.eot_samples[1] > 0 and report.eot_turns[0] == report.eot_turns[1] > 0
    assert report.pad_id is not None and report.pad_id != report.eot_id
    trained = "".join(t for t, on in report.sample if on)
    assert trained.endswith(spec.end_of_turn) and "<|im_start|>" not in trained and "<|user|>" not in trained


def test_check_cli_on_phi4_shows_its_pad_fix():
    out = cli_here("check", "model.name=tiny-phi4-14b", *FAST).stdout
    assert re.search(r"end-of-turn token <\|im_end\|> trained: yes \(own token of (\d+)/\1 assistant turns", out)
    assert re.search(r"pad token <\|dummy_85\|> \(id \d+\) distinct from end-of-turn token \(id \d+\): yes", out)
    assert "pre-flight passed" in out


def test_max_length_above_the_model_context_is_refused_and_longrope_is_noted():
    """The contexts are the specs' (models/specs.py); LongRoPE models switch RoPE factors past original_context."""
    from phinetune.errors import PreflightError
    from phinetune.models.specs import GENERIC
    from phinetune.train.preflight import context_check

    with pytest.raises(
        PreflightError,
        match=re.escape(
            "data.max_length=100000 is above tiny-phi3 (phi3-mini-4k)'s context of 4,096 tokens (positions past it were never "
            "trained); set data.max_length=4096 or less, or train a model with that context (phi3-mini-128k, phi3.5-mini, phi4-mini)"
        ),
    ):
        context_check(100000, "tiny-phi3", SPECS["phi3-mini-4k"], 4096)
    assert context_check(4096, "microsoft/Phi-3-mini-4k-instruct", SPECS["phi3-mini-4k"], 4096) == ""
    with pytest.raises(
        PreflightError, match=r"above microsoft/phi-2's context of 2,048 tokens .* or less$"
    ):  # no longer Phi-2
        context_check(4096, "microsoft/phi-2", SPECS["phi2"], 2048)
    with pytest.raises(
        PreflightError, match=r"above my/model's context of 8,192 tokens"
    ):  # another model: its config's
        context_check(10000, "my/model", GENERIC, 8192)
    phi35 = SPECS["phi3.5-mini"]
    assert context_check(4096, phi35.hub_id, phi35, phi35.context_length) == ""
    note = context_check(8192, phi35.hub_id, phi35, phi35.context_length)
    assert note.startswith(
        "data.max_length=8192 is above 4,096 tokens, where microsoft/Phi-3.5-mini-instruct switches from its "
        "short to its long RoPE factors (LongRoPE)"
    )
    with pytest.raises(PreflightError, match="context of 131,072 tokens"):
        context_check(200000, phi35.hub_id, phi35, phi35.context_length)


def test_check_cli_refuses_a_max_length_above_the_context_and_notes_longrope():
    proc = cli_here("check", "model.name=tiny-phi3", *FAST, "data.max_length=100000", check=False)
    out = " ".join(proc.stdout.split())
    assert (
        proc.returncode == 2
        and "error: data.max_length=100000 is above tiny-phi3 (phi3-mini-4k)'s context of 4,096 tokens" in out
    )
    assert "Traceback" not in proc.stdout + proc.stderr and "pre-flight" not in out  # before the data is tokenized
    proc = cli_here("check", "model.name=tiny-phi4", *FAST, "data.max_length=8192")
    assert "note: data.max_length=8192 is above 4,096 tokens, where tiny-phi4 (phi4-mini) switches" in " ".join(
        proc.stderr.split()
    )
    assert "pre-flight passed" in proc.stdout
