"""kernels/norm.py: the fused RMSNorm against transformers' own Phi3RMSNorm (outputs and input gradients), what it
keeps for the backward, and where it stands aside (a trained weight)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm

from phinetune.kernels.norm import fuse_norms, rms_norm


def reference_and_fused(shape, dtype, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    norm = Phi3RMSNorm(shape[-1], eps=eps).to(dtype).requires_grad_(False)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1], generator=gen) + 0.5)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    out = {}
    for name, fn in (("ref", norm), ("fused", lambda t: rms_norm(t, norm.weight, eps))):
        xi = x.clone().requires_grad_()
        y = fn(xi)
        y.backward(g)
        out[name] = (y.detach(), xi.grad)
    return out


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([(3, 8), (2, 5, 16), (1, 7, 96)]), st.sampled_from([1e-5, 1e-6]), st.integers(0, 10_000))
def test_matches_phi3_rmsnorm_in_fp32(shape, eps, seed):
    out = reference_and_fused(shape, torch.float32, eps, seed)
    torch.testing.assert_close(out["fused"][0], out["ref"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["fused"][1], out["ref"][1], rtol=1e-4, atol=1e-5)


def test_matches_phi3_rmsnorm_in_bf16_to_rounding():
    out = reference_and_fused((4, 64, 3072), torch.bfloat16, 1e-5, 0)
    y, ref_y = out["fused"][0].float(), out["ref"][0].float()
    assert (y != ref_y).float().mean() < 0.01  # the same roundings but for the variance's last bits
    torch.testing.assert_close(y, ref_y, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out["fused"][1].float(), out["ref"][1].float(), rtol=2e-2, atol=2e-2)


def test_keeps_the_input_in_its_own_dtype():
    """bf16 input: 2 bytes per element kept for the backward (plus one fp32 scale per token), not the fp32 copy
    transformers' module keeps (4 bytes: models/plan.py's NORM_INPUT_BYTES counts the former)."""
    sizes = {}
    for name in ("ref", "fused"):
        norm = Phi3RMSNorm(512).to(torch.bfloat16).requires_grad_(False)
        x = torch.randn(8, 512, dtype=torch.bfloat16, requires_grad=True)
        kept = {}
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: kept.setdefault(t.untyped_storage().data_ptr(), t.nbytes) and t, lambda t: t
        ):
            y = norm(x) if name == "ref" else rms_norm(x, norm.weight, norm.variance_epsilon)
        y.sum().backward()
        sizes[name] = sum(kept.values()) - 512 * 2  # less the weight
    assert sizes["fused"] == 8 * 512 * 2 + 8 * 4
    assert sizes["ref"] >= 8 * 512 * 4  # control: the fp32 copy


def test_trained_weight_keeps_transformers_module():
    """Full fine-tuning trains the norm weight: the module's own forward runs and the weight gets its gradient."""
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = Phi3ForCausalLM(config)
    assert fuse_norms(model) == 3  # two per layer and the final one
    ids = torch.randint(1, 64, (2, 6))
    model(input_ids=ids).logits.sum().backward()
    assert all(
        m.weight.grad is not None and m.weight.grad.abs().sum() > 0
        for m in model.modules()
        if isinstance(m, Phi3RMSNorm)
    )
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, Phi3RMSNorm):
            m.weight.requires_grad_(False)
    with torch.no_grad():
        frozen = model(input_ids=ids).logits
    unfused = Phi3ForCausalLM(config)
    unfused.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(frozen, unfused(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
