"""Merge parity: a LoRA merge equals base+adapter; a QLoRA merge equals, by choice of --base, the trained
model itself (dequantized: nf4 base + adapter) or the adapter over the full-precision checkpoint (original)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from phinetune.errors import ConfigError, PhinetuneError
from phinetune.export.merge import merge_run
from phinetune.runs.loading import load_for_inference
from phinetune.train.recipe import train

IDS = torch.tensor([[3, 11, 42, 99, 7, 250, 4, 18]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


def _check_written(out):
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert all(p.dtype == torch.float32 for p in merged.parameters()), "merges are written in 16/32-bit, never 4-bit"
    assert (out / "chat_template.jinja").exists() and list(out.glob("*.safetensors"))
    assert not list(out.glob("*.bin")), "weights are written as safetensors only"
    return merged


def test_lora_merged_logits_equal_adapter_logits(tiny_cfg, tmp_path):
    run = train(tiny_cfg("train.max_steps=3")).run
    merged = _check_written(merge_run(str(run.path), str(tmp_path / "merged"), dtype="fp32"))
    reference = load_for_inference(str(run.path), dtype="fp32", quant="none").model
    torch.testing.assert_close(_logits(merged), _logits(reference), rtol=1e-4, atol=1e-4)
    base_only = load_for_inference(str(run.path), dtype="fp32", quant="none", adapter=False).model
    assert not torch.allclose(_logits(merged), _logits(base_only), atol=1e-3), "the adapter must change the logits"
    out = tmp_path / "merged"
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in out.glob("*.safetensors")} == {
        f.name: oct(0o666 & ~umask) for f in out.glob("*.safetensors")
    }  # not transformers' private 0600


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    from phinetune.config import load_config

    out = tmp_path_factory.mktemp("qlora") / "run"
    cfg = load_config(
        None,
        [
            "model.name=tiny-phi3",
            "model.quant=nf4",
            "model.dtype=fp32",
            "data.train=builtin:riddles",
            "data.eval_size=4",
            "data.limit=24",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.learning_rate=3e-3",
            "adapter.modules_to_save=[embed_tokens,lm_head]",
            f"output.dir={out}",
        ],
    )
    return train(cfg).run


def test_qlora_both_bases_against_the_trained_model(qlora_run, tmp_path, capsys):
    trained = _logits(
        load_for_inference(str(qlora_run.path), dtype="fp32", quant="nf4").model
    )  # nf4 base + adapter, as trained
    full_precision = _logits(
        load_for_inference(str(qlora_run.path), dtype="fp32", quant="none").model
    )  # adapter over the checkpoint

    deq = merge_run(str(qlora_run.path), str(tmp_path / "deq"), dtype="fp32")  # the default base
    printed = " ".join(capsys.readouterr().out.split())
    orig = merge_run(str(qlora_run.path), str(tmp_path / "orig"), dtype="fp32", base="original")
    deq_logits, orig_logits = _logits(_check_written(deq)), _logits(_check_written(orig))

    # original: exactly the adapter over the full-precision checkpoint
    torch.testing.assert_close(orig_logits, full_precision, rtol=1e-4, atol=1e-4)
    # dequantized: the trained model, up to the bnb CPU kernel's own rounding (it multiplies NF4 weights
    # dequantized to bf16; on CUDA the gap is float rounding), and far closer to it than the original base
    deq_err, orig_err = (deq_logits - trained).abs().max(), (orig_logits - trained).abs().max()
    assert deq_err < 1e-2 and deq_err * 4 < orig_err, (deq_err, orig_err)

    records = {name: json.loads((path / "phinetune.json").read_text()) for name, path in (("deq", deq), ("orig", orig))}
    assert records["deq"]["base"] == "dequantized" and records["orig"]["base"] == "original"
    gap = records["deq"]["logit_gap_original_vs_dequantized"]
    assert gap == records["orig"]["logit_gap_original_vs_dequantized"]  # the same two merges on the same samples
    assert gap["samples"] == 4 and gap["max_abs"] > 1e-3 and 0 < gap["top1_agreement"] <= 1
    assert (
        f"logit gap, --base original vs dequantized, on 4 held-out samples ({gap['tokens']} tokens): max |diff| {gap['max_abs']:.3g}"
        in printed
    )


def test_merge_refuses_an_unknown_base_and_non_empty_output(qlora_run, tmp_path):
    with pytest.raises(ConfigError, match="--base 'nf4' is unknown"):
        merge_run(str(qlora_run.path), str(tmp_path / "x"), base="nf4")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(PhinetuneError, match="not empty"):
        merge_run(str(qlora_run.path), str(tmp_path / "busy"))
