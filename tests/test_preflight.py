"""The pre-flight report: per layer type, trainable share, the rendered sample with its mask, the
end-of-turn check, the dtype plan; `phinetune check`; RUN/preflight.json."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
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
    assert report.eot_trained and report.eot_samples == (10, 10)
    trained = "".join(t for t, on in report.sample if on)
    assert trained.endswith("<|end|>") and "<|user|>" not in trained and "<|assistant|>" not in trained
    assert report.dtype["dtype"] == "fp32"


def test_check_cli_passes_and_shows_the_mask():
    out = run_cli("check", "model.name=tiny-phi3", *FAST).stdout
    assert "layers.*.self_attn.qkv_proj" in out and "trainable parameters:" in out
    assert "[[" in out and "<|end|>]]" in out and "pre-flight passed" in out


def test_check_cli_fails_on_the_seed_list():
    proc = run_cli("check", "model.name=tiny-phi3", *FAST, "adapter.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]", check=False)
    assert proc.returncode == 2
    assert "'q_proj' matches nothing in phi3-mini-4k; in phi3-mini-4k that is qkv_proj" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_cli_fails_when_end_of_turn_is_cut_off():
    proc = run_cli("check", "model.name=tiny-phi3", *FAST, "data.max_length=24", check=False)
    assert proc.returncode == 2 and "pre-flight failed" in proc.stdout
    assert "allow_empty_samples" in proc.stdout or "allow_untrained_eot" in proc.stdout


def test_train_saves_preflight_json(tiny_cfg):
    from phinetune.train.recipe import train

    cfg = tiny_cfg("train.max_steps=1", "train.eval_every=1")
    result = train(cfg)
    saved = json.loads((result.run.path / "preflight.json").read_text())
    assert saved["problems"] == [] and saved["trainable"] > 0 and 0 < saved["share_percent"] < 100
    assert {row["layer_type"] for row in saved["layers"]} >= {"layers.*.self_attn.qkv_proj", "embed_tokens", "lm_head"}
    assert saved["eot_trained"] and any(on for _, on in saved["sample"])


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
        f"layers.*.{t}" for t in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    assert report.eot_token == spec.end_of_turn and report.eot_trained and report.eot_samples == (10, 10)
    assert report.pad_id is not None and report.pad_id != report.eot_id
    trained = "".join(t for t, on in report.sample if on)
    assert trained.endswith(spec.end_of_turn) and "<|im_start|>" not in trained and "<|user|>" not in trained


def test_check_cli_on_phi4_shows_its_pad_fix():
    out = run_cli("check", "model.name=tiny-phi4-14b", *FAST).stdout
    assert "end-of-turn token <|im_end|> trained: yes (10/10 chat samples" in out
    assert "pad token <|dummy_85|>" in out and "distinct from end-of-turn: yes" in out and "pre-flight passed" in out
