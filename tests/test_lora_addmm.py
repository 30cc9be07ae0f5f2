"""The addmm LoRA variant (kernels/lora_addmm.py) computes PEFT's vanilla LoRA: same outputs and gradients on identical
batches (fp32 exactly to rounding, bf16 autocast to bf16 rounding), same merge, same saved adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from phinetune.kernels.lora_addmm import AddmmLoraVariant, install_lora_addmm
from phinetune.kernels.lora_dropout import install_lora_dropout
from phinetune.train.precision import adapter_autocast


def _pair(dtype=torch.float32, dropout=0.0, bias=True, **lora):
    """Two identical LoRA'd two-layer nets, to get the addmm variant in the second; both with PositionDropout.
    Biased Linears return 3-D outputs as views (the out-of-place addmm), unbiased ones not (the in-place baddbmm_)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 96, bias=bias), torch.nn.ReLU(), torch.nn.Linear(96, 32, bias=bias)
    ).to(dtype)
    config = LoraConfig(
        r=4, lora_alpha=12, lora_dropout=dropout, target_modules=["0", "2"], init_lora_weights=False, **lora
    )
    vanilla = get_peft_model(copy.deepcopy(net), config)
    fused = get_peft_model(copy.deepcopy(net), config)
    fused.load_state_dict(vanilla.state_dict())
    for m in (vanilla, fused):
        install_lora_dropout(m)
        m.train()
    return vanilla, fused


def _step(model, x, autocast_dtype=None, seed=5):
    torch.manual_seed(seed)
    model.zero_grad()
    xx = x.clone().requires_grad_(True)
    with adapter_autocast(model, autocast_dtype):
        out = model(xx)
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), xx.grad, grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [2, 3])
def test_fp32_outputs_and_gradients_match_peft(dropout, bias, rank):
    vanilla, fused = _pair(dropout=dropout, bias=bias)
    assert install_lora_addmm(fused) == 2
    x = torch.randn(3, 10, 64) if rank == 3 else torch.randn(30, 64)
    (o1, gx1, g1), (o2, gx2, g2) = _step(vanilla, x), _step(fused, x)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and g1
    for name in g1:  # the same sums in another order: float rounding only
        assert float((g2[name] - g1[name]).norm() / g1[name].norm()) < 1e-5, name


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_autocast_is_as_close_to_fp32_as_peft_is(bias):
    """Under bf16 autocast both round differently (neither is systematically closer: one seed favours either);
    against the same nets run in fp32 on the same masks (the positions depend only on the seed and the size),
    the variant's error averaged over seeds is no larger than PEFT's own."""
    vanilla, fused = _pair(torch.bfloat16, dropout=0.05, bias=bias)
    install_lora_addmm(fused)
    reference = copy.deepcopy(vanilla).float()

    def err(a, b):
        return float((a.float() - b).norm() / b.norm())

    errors = {"peft": [], "variant": []}
    for seed in range(4):
        x = torch.randn(4, 16, 64, dtype=torch.bfloat16)
        o0, _, g0 = _step(reference, x.float(), seed=seed)
        for name, model in (("peft", vanilla), ("variant", fused)):
            out, _, grads = _step(model, x, torch.bfloat16, seed=seed)
            assert out.dtype == torch.bfloat16
            errors[name] += [err(out, o0)] + [err(grads[n], g0[n]) for n in g0]
    mean = {k: sum(v) / len(v) for k, v in errors.items()}
    assert mean["variant"] <= 1.5 * mean["peft"] + 2e-3, mean
    assert max(errors["variant"]) < 0.05


def test_fp32_adapters_on_a_bf16_output_outside_autocast_take_peft_line():
    vanilla, fused = _pair(torch.bfloat16)
    for m in (vanilla, fused):
        for p in m.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # PEFT's own layout: fp32 adapters on a bf16 base, input cast to fp32
    install_lora_addmm(fused)
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), vanilla.eval()(x), rtol=0, atol=0)


def test_merge_and_unmerge_are_peft_arithmetic():
    vanilla, fused = _pair()
    install_lora_addmm(fused)
    x = torch.randn(5, 64)
    vanilla.eval(), fused.eval()
    with torch.no_grad():
        before = fused(x)
        for safe in (True, False):
            for m in (vanilla, fused):
                for l in m.modules():
                    if hasattr(l, "lora_variant"):
                        l.merge(safe_merge=safe)
            w1 = vanilla.base_model.model[0].base_layer.weight
            w2 = fused.base_model.model[0].base_layer.weight
            torch.testing.assert_close(w2, w1, rtol=0, atol=0)
            torch.testing.assert_close(fused(x), before, rtol=1e-5, atol=1e-5)
            for m in (vanilla, fused):
                for l in m.modules():
                    if hasattr(l, "lora_variant"):
                        l.unmerge()
            torch.testing.assert_close(fused(x), before, rtol=1e-5, atol=1e-5)
        merged = fused.merge_and_unload()
        torch.testing.assert_close(merged(x), before, rtol=1e-5, atol=1e-5)


def test_saved_adapter_is_plain_lora(tmp_path):
    from safetensors.torch import load_file

    vanilla, fused = _pair()
    install_lora_addmm(fused)
    vanilla.save_pretrained(tmp_path / "v")
    fused.save_pretrained(tmp_path / "f")
    a, b = (
        load_file(tmp_path / "v" / "adapter_model.safetensors"),
        load_file(tmp_path / "f" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "v" / "adapter_config.json").read_text() == (tmp_path / "f" / "adapter_config.json").read_text()


def test_other_variants_and_lora_bias_are_left_to_peft():
    _, dora = _pair(use_dora=True)
    assert install_lora_addmm(dora) == 0
    assert not any(
        isinstance(v, AddmmLoraVariant) for m in dora.modules() for v in getattr(m, "lora_variant", {}).values()
    )
    _, biased = _pair(lora_bias=True)
    assert install_lora_addmm(biased) == 0


def test_installed_by_apply_adapter():
    from phinetune.config import load_config
    from phinetune.models.specs import get_spec
    from phinetune.models.tiny import build_tiny
    from phinetune.train.adapter import apply_adapter

    cfg = load_config(None, ["model.name=tiny-phi3"])
    model, tok = build_tiny("tiny-phi3")
    model = apply_adapter(model, get_spec("tiny-phi3"), cfg.adapter, cfg.model, tok, cfg.preflight)
    variants = [v for m in model.modules() for v in getattr(m, "lora_variant", {}).values()]
    assert variants and all(isinstance(v, AddmmLoraVariant) for v in variants)


def test_training_forward_adds_into_the_base_output_itself():
    """At the training layout (3-D batch, bf16 autocast) the LoRA product lands in the base layer's own output
    (no full-width copy), and autograd accepts it: the gradient checks above run the same path."""
    _, fused = _pair(torch.bfloat16, dropout=0.05, bias=False)
    install_lora_addmm(fused)
    layer = fused.base_model.model[0]
    seen = []
    layer.base_layer.register_forward_hook(lambda mod, args, out: seen.append((out.data_ptr(), out._base is None)))
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    with adapter_autocast(fused, torch.bfloat16):
        hidden = layer(x)
    assert seen == [(hidden.data_ptr(), True)]
    hidden.float().sum().backward()
    assert x.grad is not None and layer.lora_B["default"].weight.grad is not None
