"""PositionDropout is torch's dropout contract with the dropped positions drawn directly (kernels/lora_dropout.py):
each element dropped independently with probability p, the rest scaled by 1/(1-p), reproducible from the seed,
identity in eval mode, the gradient the mask times the upstream gradient, and installed on every LoRA layer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phinetune.kernels.lora_dropout import MAX_P, PositionDropout, drop_positions, install_lora_dropout


def _dropped(p: float, shape, seed: int = 0, dtype=torch.float32):
    """Input of values in [1, 2) (never zero), the dropout's output, and the input."""
    torch.manual_seed(seed)
    x = (torch.rand(shape) + 1).to(dtype)
    drop = PositionDropout(p).train()
    return x, drop(x)


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.01, MAX_P), rows=st.integers(1, 64), cols=st.integers(1, 700), seed=st.integers(0, 2**31))
def test_keep_rate_and_scale_match_p(p, rows, cols, seed):
    x, y = _dropped(p, (rows, cols), seed)
    n = x.numel()
    dropped = int((y == 0).sum())
    # the drop count is Binomial(n, p): within 6 standard deviations (a false failure once in ~1e9 draws)
    assert abs(dropped - n * p) <= 6 * math.sqrt(n * p * (1 - p)) + 1
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * (1 / (1 - p)), rtol=0, atol=0)


def test_every_position_is_dropped_at_rate_p_and_counts_are_binomial():
    """Independent of where an element sits (first and last included) and of the others: over many draws of 8
    elements, each position's drop frequency is p and the number dropped per draw follows Binomial(8, p)."""
    torch.manual_seed(1)
    p, n, draws = 0.3, 8, 20_000
    masks = torch.zeros(draws, n)
    for i in range(draws):
        masks[i, drop_positions(n, p)] = 1
    sigma = math.sqrt(draws * p * (1 - p))
    assert (masks.sum(0) - draws * p).abs().max() <= 5 * sigma
    counts = torch.bincount(masks.sum(1).long(), minlength=n + 1).double()
    expected = torch.tensor([math.comb(n, k) * p**k * (1 - p) ** (n - k) * draws for k in range(n + 1)])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30  # 8 degrees of freedom: P(chi2 > 30) ~ 2e-4
    # pairwise independence of neighbours: P(both dropped) = p^2
    both = float((masks[:, :-1] * masks[:, 1:]).mean())
    assert both == pytest.approx(p * p, abs=0.01)


def test_positions_are_sorted_unique_and_in_range():
    torch.manual_seed(2)
    pos = drop_positions(100_003, 0.05)
    assert pos.dtype == torch.int64 and pos.numel() > 0
    assert bool((pos[1:] > pos[:-1]).all()) and int(pos[0]) >= 0 and int(pos[-1]) < 100_003
    assert drop_positions(0, 0.05).numel() == 0


def test_same_seed_same_mask_other_seed_other_mask():
    _, a = _dropped(0.05, (32, 300), seed=7)
    _, b = _dropped(0.05, (32, 300), seed=7)
    _, c = _dropped(0.05, (32, 300), seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a == 0, c == 0)


def test_rng_state_restored_gives_the_same_mask():
    """What exact resume relies on: the generator's saved state, set back, replays the mask."""
    x = torch.rand(16, 128) + 1
    drop = PositionDropout(0.1).train()
    state = torch.get_rng_state()
    first = drop(x)
    torch.set_rng_state(state)
    assert torch.equal(drop(x), first)


def test_eval_mode_is_the_identity():
    x = torch.rand(4, 50)
    drop = PositionDropout(0.2).eval()
    assert drop(x) is x


def test_gradient_is_the_mask_times_the_upstream_gradient():
    torch.manual_seed(3)
    x = (torch.rand(8, 257) + 1).requires_grad_(True)
    y = PositionDropout(0.1).train()(x)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    mask = (y != 0).to(x.dtype)
    torch.testing.assert_close(x.grad, upstream * mask * (1 / 0.9), rtol=0, atol=0)


def test_bf16_keeps_its_dtype_and_scales_at_full_precision():
    x, y = _dropped(0.05, (16, 512), seed=4, dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept].float() * (1 / 0.95)).to(torch.bfloat16), rtol=0, atol=0)


def test_non_contiguous_input_drops_in_its_logical_order():
    torch.manual_seed(5)
    x = (torch.rand(300, 40) + 1).t()  # a transposed view
    y = PositionDropout(0.2).train()(x)
    assert y.shape == x.shape
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * (1 / 0.8), rtol=0, atol=0)


def test_gradient_checkpointing_recompute_draws_the_same_mask():
    """torch.utils.checkpoint restores the RNG state for its recompute: the gradients with and without it agree."""
    from torch.utils.checkpoint import checkpoint

    a, b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)
    drop = PositionDropout(0.3).train()
    x = torch.randn(32, 64)

    def grads(use_checkpoint: bool):
        torch.manual_seed(11)
        f = lambda t: b(drop(a(t)))
        out = checkpoint(f, x, use_reentrant=False) if use_checkpoint else f(x)
        a.zero_grad(), b.zero_grad()
        out.square().sum().backward()
        return a.weight.grad.clone()

    torch.testing.assert_close(grads(True), grads(False), rtol=0, atol=0)


def test_large_p_falls_back_to_torch_dropout():
    torch.manual_seed(6)
    x = torch.rand(200, 200) + 1
    y = PositionDropout(0.7).train()(x)
    assert abs(float((y == 0).float().mean()) - 0.7) < 0.02


def test_installed_on_every_lora_layer_of_an_adapted_model():
    from phinetune.config import load_config
    from phinetune.models.specs import get_spec
    from phinetune.models.tiny import build_tiny
    from phinetune.train.adapter import apply_adapter

    def adapted(dropout: float):
        cfg = load_config(None, ["model.name=tiny-phi3", f"adapter.dropout={dropout}"])
        model, tok = build_tiny("tiny-phi3")
        return apply_adapter(model, get_spec("tiny-phi3"), cfg.adapter, cfg.model, tok, cfg.preflight)

    layers = [m for m in adapted(0.05).modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert layers and all(
        isinstance(m.lora_dropout["default"], PositionDropout) and m.lora_dropout["default"].p == 0.05 for m in layers
    )
    none = adapted(0.0)
    assert not any(isinstance(m, PositionDropout) for m in none.modules())
    assert install_lora_dropout(none) == 0  # p = 0 stays PEFT's Identity


def test_lora_layer_output_matches_peft_with_the_same_mask():
    """The LoRA layer with PositionDropout computes base(x) + B(A(mask * x / (1-p))) * scaling, by hand."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(48, 40))
    model = get_peft_model(
        net, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["0"], init_lora_weights=False)
    )
    assert install_lora_dropout(model) == 1
    model.train()
    layer = model.base_model.model[0]
    x = torch.rand(6, 48) + 1
    state = torch.get_rng_state()
    out = model(x)
    torch.set_rng_state(state)
    dropped = layer.lora_dropout["default"](x)  # the same draw
    by_hand = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](dropped)) * layer.scaling["default"]
    torch.testing.assert_close(out, by_hand)
    assert 0 < int((dropped == 0).sum()) < dropped.numel()
