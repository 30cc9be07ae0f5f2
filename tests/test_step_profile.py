"""bench/step_profile.py: a real profile of a LoRA training step, charged to the parts the ops ran in."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from phinetune.bench.step_profile import PARTS, format_split, part_of_module, profile_steps
from phinetune.models.tiny import build_tiny
from phinetune.train.loss import loss_sum


@pytest.fixture(scope="module")
def split():
    torch.manual_seed(0)
    model, _ = build_tiny("tiny-phi3")
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.1,
            task_type="CAUSAL_LM",
            target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        ),
    )
    ids = torch.randint(3, 200, (2, 24))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(24).repeat(2, 1)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(i):
        loss, n = loss_sum(model, batch)
        (loss / n).backward()
        with torch.profiler.record_function("phinetune.optimizer"):  # as train/loop.optimizer_step names it
            optimizer.step()
            optimizer.zero_grad()

    model.train()
    step(0)
    return profile_steps(model, step, [1, 2])


def test_parts_cover_the_wall_time(split):
    assert set(split["seconds"]) == set(PARTS) and split["steps"] == 2
    assert sum(split["seconds"].values()) == pytest.approx(split["wall_s"], rel=1e-6)
    assert sum(split["share"].values()) == pytest.approx(1.0, rel=1e-6)
    for part in ("matmuls", "attention", "LoRA", "loss", "optimizer"):
        assert split["seconds"][part] > 0, part


def test_ops_land_in_the_module_they_ran_in(split):
    ops = split["top_ops"]
    assert any("scaled_dot_product" in name for name in ops["attention"])
    assert any(name in ("aten::mm", "aten::addmm") for name in ops["matmuls"])
    # train/loss.py's cross_entropy_and_grad: max, exp, normalise, in place over the chunk's logits
    assert {"aten::exp_", "aten::amax", "aten::div_", "aten::sub_", "aten::sum", "aten::copy_"} & set(ops["loss"])
    assert (
        any("_foreach" in name or "adam" in name.lower() for name in ops["optimizer"])
        or split["seconds"]["optimizer"] > 0
    )


def test_backward_matmul_of_the_head_is_a_matmul_not_loss():
    """The loss computes the head's gradient inside its forward: that backward mm belongs to matmuls."""
    torch.manual_seed(0)
    model, _ = build_tiny("tiny-phi3")
    ids = torch.randint(3, 200, (1, 16))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(16)[None]}
    split = profile_steps(model, lambda i: loss_sum(model, batch)[0].backward(), [0])
    assert "aten::mm" not in split["top_ops"].get("loss", {})


def test_part_of_module_names():
    assert part_of_module("base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.default") == "LoRA"
    assert part_of_module("base_model.model.model.layers.0.mlp.down_proj.lora_dropout.default") == "LoRA"
    assert part_of_module("base_model.model.model.layers.0.self_attn.qkv_proj.base_layer") == "matmuls"
    assert part_of_module("base_model.model.lm_head") == "matmuls"
    assert part_of_module("base_model.model.model.layers.0.self_attn") == "attention"
    assert part_of_module("base_model.model.model.layers.0.input_layernorm") is None


def test_format_split_lists_every_part(split):
    lines = format_split(split)
    assert all(any(line.startswith(part) for line in lines) for part in PARTS)
