"""Merge parity: the merged model's logits equal base+adapter logits (LoRA and QLoRA)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from phinetune.errors import PhinetuneError
from phinetune.export.merge import merge_run
from phinetune.runs.loading import load_for_inference
from phinetune.train.recipe import train

IDS = torch.tensor([[3, 11, 42, 99, 7, 250, 4, 18]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_merged_logits_equal_adapter_logits(tiny_cfg, tmp_path, quant):
    run = train(tiny_cfg(f"model.quant={quant}", "train.max_steps=3")).run
    out = merge_run(str(run.path), str(tmp_path / "merged"), dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert all(p.dtype == torch.float32 for p in merged.parameters()), "QLoRA must merge into a dequantized base"
    # Reference: the same adapter over the base at full precision (merge never re-quantizes).
    reference = load_for_inference(str(run.path), dtype="fp32", quant="none").model
    torch.testing.assert_close(_logits(merged), _logits(reference), rtol=1e-4, atol=1e-4)
    base_only = load_for_inference(str(run.path), dtype="fp32", quant="none", adapter=False).model
    assert not torch.allclose(_logits(merged), _logits(base_only), atol=1e-3), "the adapter must change the logits"
    assert (out / "chat_template.jinja").exists() and list(out.glob("*.safetensors"))
    assert not list(out.glob("*.bin")), "weights are written as safetensors only"


def test_merge_refuses_non_empty_output(tiny_cfg, tmp_path):
    run = train(tiny_cfg("train.max_steps=1")).run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(PhinetuneError, match="not empty"):
        merge_run(str(run.path), str(tmp_path / "busy"))
