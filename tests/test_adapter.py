"""Adapter options each change exactly what they should: DoRA, rsLoRA, LoRA+ and NEFTune."""

from __future__ import annotations

import math

import pytest
import torch

from phinetune.config import load_config
from phinetune.models.specs import get_spec
from phinetune.models.tiny import build_tiny
from phinetune.train.adapter import apply_adapter
from phinetune.train.loop import make_optimizer


def _adapted(*overrides: str):
    cfg = load_config(None, ["model.name=tiny-phi3", "adapter.r=8", "adapter.alpha=16", *overrides])
    model, tok = build_tiny("tiny-phi3")
    return apply_adapter(model, get_spec("tiny-phi3"), cfg.adapter, cfg.model, tok, cfg.preflight), cfg


def _lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]


def test_rslora_scales_by_alpha_over_sqrt_r():
    plain, _ = _adapted()
    rs, _ = _adapted("adapter.rslora=true")
    assert {m.scaling["default"] for m in _lora_layers(plain)} == {16 / 8}
    scales = {m.scaling["default"] for m in _lora_layers(rs)}
    assert len(scales) == 1 and scales.pop() == pytest.approx(16 / math.sqrt(8))


def test_dora_adds_trainable_magnitudes_that_start_at_the_weight_norms():
    plain, _ = _adapted()
    dora, _ = _adapted("adapter.dora=true")
    assert not any("lora_magnitude_vector" in n for n, _ in plain.named_parameters())
    mags = {n: p for n, p in dora.named_parameters() if "lora_magnitude_vector" in n}
    assert mags and all(p.requires_grad for p in mags.values())
    layer = _lora_layers(dora)[0]
    # DoRA's magnitude is initialised to the column norms of the frozen weight (Liu et al. 2024, eq. 2).
    expected = layer.base_layer.weight.detach().norm(p=2, dim=1)
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight.detach(), expected)


def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate():
    model, cfg = _adapted("adapter.loraplus_ratio=16", "train.learning_rate=1e-4")
    opt = make_optimizer(model, cfg)
    ids = {id(p): n for n, p in model.named_parameters()}
    lr_of = {ids[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    a_lrs = {lr for n, lr in lr_of.items() if "lora_A" in n}
    b_lrs = {lr for n, lr in lr_of.items() if "lora_B" in n}
    assert a_lrs == {1e-4} and len(b_lrs) == 1 and b_lrs.pop() == pytest.approx(16e-4)
    plain, pcfg = _adapted("train.learning_rate=1e-4")
    assert {g["lr"] for g in make_optimizer(plain, pcfg).param_groups} == {1e-4}


def test_neftune_noises_embeddings_in_training_only_within_its_bound():
    model, _ = _adapted("adapter.neftune_alpha=5")
    clean_model, _ = _adapted()
    ids = torch.randint(0, 500, (2, 12))
    emb, clean = model.get_input_embeddings(), clean_model.get_input_embeddings()
    model.train()
    noisy = emb(ids)
    ref = clean(ids)
    bound = 5 / math.sqrt(12 * ref.shape[-1])
    delta = (noisy - ref).abs()
    assert delta.max() <= bound + 1e-6 and delta.max() > bound * 0.9  # uniform in [-bound, bound]
    assert not torch.equal(emb(ids), noisy)  # fresh noise every forward
    model.eval()
    assert torch.equal(emb(ids), ref)
