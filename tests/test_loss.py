"""The fast loss path (decoder + chunked LM head on trained positions only) equals plain full-logits CE."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from phinetune.models.tiny import build_tiny
from phinetune.train import loss as loss_mod
from phinetune.train.loss import full_logits_loss_sum, loss_sum, split_head


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 21), generator=g)
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt
    labels[2, 15:] = -100  # padding
    pos = torch.arange(21).repeat(3, 1)
    pos[1, 9:] = torch.arange(12)  # two packed samples
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def _peft(name: str, modules_to_save=None, lora_head=False):
    model, _ = build_tiny(name)
    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] + (["lm_head"] if lora_head else [])
    if name == "tiny-phi2":
        targets = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    torch.manual_seed(1)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=modules_to_save,
            task_type="CAUSAL_LM",
        ),
    )
    for n, p in peft.named_parameters():  # LoRA B starts at zero; make every adapter matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return peft


def _grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    loss, n = fn(model, batch)
    (loss / n).backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "name,mts,lora_head",
    [
        ("tiny-phi3", None, False),
        ("tiny-phi3", ["lm_head", "embed_tokens"], False),
        ("tiny-phi3", None, True),
        ("tiny-phi2", ["lm_head"], False),
    ],
)
def test_fast_loss_equals_full_logits(name, mts, lora_head, monkeypatch):
    model = _peft(name, mts, lora_head)
    assert split_head(model) is not None, "the fast path must apply to Phi models"
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", 7 * model.config.vocab_size)  # several chunks, one ragged
    batch = _batch(model.config.vocab_size)
    fast = _grads(model, loss_sum, batch)
    full = _grads(model, full_logits_loss_sum, batch)
    assert fast[1] == full[1]
    torch.testing.assert_close(fast[0], full[0], rtol=1e-5, atol=1e-5)
    assert set(fast[2]) == set(full[2]) and len(fast[2]) > 0
    for k in full[2]:
        torch.testing.assert_close(fast[2][k], full[2][k], rtol=1e-4, atol=1e-6, msg=k)
    if mts:
        assert any("modules_to_save" in k and "lm_head" in k and fast[2][k].abs().sum() > 0 for k in fast[2])
    if lora_head:
        assert any("lm_head.lora_A" in k for k in fast[2])


def test_fast_loss_under_no_grad_matches():
    model = _peft("tiny-phi3")
    batch = _batch(model.config.vocab_size, seed=3)
    with torch.no_grad():
        a, n = loss_sum(model, batch)
        b, m = full_logits_loss_sum(model, batch)
    assert n == m
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fast_loss_with_qlora():
    pytest.importorskip("bitsandbytes")
    import tempfile

    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from phinetune.models.tiny import save_tiny

    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny("tiny-phi3", __import__("pathlib").Path(tmp) / "m")
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        base = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.float32)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    model = get_peft_model(
        base,
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        ),
    )
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    assert "4bit" in type(model.base_model.model.model.layers[0].self_attn.qkv_proj.base_layer).__name__
    batch = _batch(model.config.vocab_size, seed=5)
    fast = _grads(model, loss_sum, batch)
    full = _grads(model, full_logits_loss_sum, batch)
    torch.testing.assert_close(fast[0], full[0], rtol=1e-5, atol=1e-5)
    for k in full[2]:
        torch.testing.assert_close(fast[2][k], full[2][k], rtol=1e-4, atol=1e-6, msg=k)


def test_ddp_like_wrapper_falls_back():
    model = _peft("tiny-phi3")

    class DistributedDataParallel(torch.nn.Module):  # stands in for torch's wrapper (module path checked)
        pass

    DistributedDataParallel.__module__ = "torch.nn.parallel.distributed"
    assert split_head(DistributedDataParallel()) is None
    assert split_head(copy.deepcopy(model)) is not None
