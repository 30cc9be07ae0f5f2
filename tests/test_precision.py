"""`model.dtype: auto` picks bf16 on CPU only for wide LoRA models on CPUs with bf16 units."""

from __future__ import annotations

import json

import pytest
import torch

from phinetune.config import load_config
from phinetune.models.specs import get_spec
from phinetune.train import precision


def _cfg(*overrides):
    return load_config(None, ["model.name=x", *overrides])


def _model_dir(tmp_path, hidden):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    return str(tmp_path)


def test_bf16_for_wide_lora_on_bf16_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = get_spec("microsoft/Phi-3-mini-4k-instruct")
    plan = precision.choose_train_dtype(_cfg(), spec, _model_dir(tmp_path, 3072))
    assert plan.dtype == torch.bfloat16


def test_fp32_when_unsafe_or_not_worth_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = get_spec("microsoft/Phi-3-mini-4k-instruct")
    wide = _model_dir(tmp_path, 3072)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert precision.choose_train_dtype(_cfg("adapter.modules_to_save=[lm_head]"), spec, wide).dtype == torch.float32
    assert precision.choose_train_dtype(_cfg("adapter.method=full"), spec, wide).dtype == torch.float32
    assert precision.choose_train_dtype(_cfg("model.dtype=fp32"), spec, wide).dtype == torch.float32
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 128}))
    assert precision.choose_train_dtype(_cfg(), spec, wide).dtype == torch.float32
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3072}))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    plan = precision.choose_train_dtype(_cfg(), spec, wide)
    assert plan.dtype == torch.float32 and "avx512_bf16" in plan.reason


def test_adapters_compute_in_bf16_only_for_lora_on_a_bf16_base(monkeypatch):
    from phinetune.models.loading import DtypePlan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bf16, fp32 = DtypePlan(torch.bfloat16, "bf16", ""), DtypePlan(torch.float32, "fp32", "")
    assert precision.adapter_compute_dtype(_cfg(), bf16) == torch.bfloat16
    assert precision.adapter_compute_dtype(_cfg(), fp32) is None
    assert precision.adapter_compute_dtype(_cfg("adapter.method=full"), bf16) is None
    assert precision.adapter_compute_dtype(_cfg("model.quant=nf4"), bf16) is None


def _bf16_lora(seed=0):
    from peft import LoraConfig, get_peft_model

    from phinetune.models.tiny import build_tiny

    torch.manual_seed(seed)
    model, _ = build_tiny("tiny-phi3")
    model = get_peft_model(
        model.to(torch.bfloat16),
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        ),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B, so the adapters change the output and A gets a gradient
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_bf16_adapters_match_peft_fp32_adapters():
    """Same loss and LoRA gradients (to bf16 rounding) as PEFT's own fp32 adapter path, weights and grads fp32."""
    from phinetune.train.loss import loss_sum

    model = _bf16_lora()
    ids = torch.randint(3, 200, (2, 32))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(32).repeat(2, 1)}
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in lora.values())

    def grads(dtype):
        with precision.adapter_autocast(model, dtype):
            loss, n = loss_sum(model, batch)
        (loss / n).backward()
        out = {k: p.grad.clone() for k, p in lora.items()}
        model.zero_grad(set_to_none=True)
        return float(loss) / n, out

    ref_loss, ref = grads(None)
    fast_loss, fast = grads(torch.bfloat16)
    assert fast_loss == pytest.approx(ref_loss, rel=2e-3)
    for k in ref:
        assert fast[k].dtype == torch.float32
        assert float((fast[k] - ref[k]).norm() / ref[k].norm()) < 0.03, k
    # Leaving the context restores PEFT's input cast: a plain (fp32-adapter) forward works as before.
    with torch.no_grad():
        assert model(input_ids=ids).logits.dtype == torch.bfloat16


def test_a_bf16_training_step_uses_bf16_adapters(tiny_cfg):
    from phinetune.train import recipe

    loop = recipe.setup(tiny_cfg("model.dtype=bf16", "adapter.modules_to_save=[]", "train.max_steps=2"))
    assert loop.adapter_dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in loop.model.named_parameters() if p.requires_grad}
    stats = [loop.objective.step(loop, step) for step in range(2)]  # LoRA A moves from the second step (B starts at 0)
    assert all(s.loss > 0 and s.grad_norm > 0 for s in stats)
    after = dict(loop.model.named_parameters())
    assert all(after[n].dtype == torch.float32 and not torch.equal(after[n].detach(), b) for n, b in before.items())


@pytest.mark.parametrize("dropout", [0.6, 0.1], ids=["torch-dropout", "position-dropout"])
def test_checkpointing_recomputes_bf16_adapters_as_the_forward_ran_them(tiny_cfg, dropout):
    """A bf16 base on CPU with gradient checkpointing: the recompute (in the backward) must run the adapters in bf16
    as the forward did. Before adapter_recompute, PEFT's input cast came back in the backward: torch's dropout
    (p above kernels/lora_dropout.py's MAX_P) then recomputed an fp32 noise and checkpoint refused it, and every
    LoRA'd input was recomputed as an fp32 copy."""
    from phinetune.train.recipe import train

    overrides = (
        "model.dtype=bf16",
        f"adapter.dropout={dropout}",
        "train.max_steps=2",
        "train.eval_every=1000",
        "train.recall_check=false",
        "data.packing=false",
    )
    on = train(
        tiny_cfg(*overrides, "model.gradient_checkpointing=true", "output.dir=" + str(tiny_cfg().output.dir) + "-on")
    )
    off = train(
        tiny_cfg(*overrides, "model.gradient_checkpointing=false", "output.dir=" + str(tiny_cfg().output.dir) + "-off")
    )
    losses = [
        [
            json.loads(line)["loss"]
            for line in (r.run.path / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line
        ]
        for r in (on, off)
    ]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-3)  # same steps, same RNG, same dtypes
