"""Three commonly copied, broken LoRA target lists are refused before training, naming the real targets."""

from __future__ import annotations

import warnings

import pytest
from peft import LoraConfig, get_peft_model

from phinetune.config.schema import AdapterConfig, ModelConfig, PreflightConfig
from phinetune.errors import PreflightError
from phinetune.models.specs import SPECS
from phinetune.train.adapter import apply_adapter
from phinetune.train.targets import group_by_layer_type, layer_type, match_targets, peft_matches
from test_specs import tiny_model

SEED_LISTS = {  # verbatim from the seed tutorials
    "phi3.5-moe": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate",
        "w1",
        "w2",
        "w3",
    ],
    "phi3.5-mini": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi2": ["Wqkv", "out_proj", "fc1", "fc2"],
}
MUST_NAME = {  # what the message must point the user to
    "phi3.5-moe": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.router", "'w1'", "'gate'"],
    "phi3.5-mini": ["qkv_proj", "gate_up_proj", "'q_proj'", "'up_proj'"],
    "phi2": ["q_proj, k_proj, v_proj", "dense", "'Wqkv'", "'out_proj'"],
}


@pytest.mark.parametrize("spec_key", list(SEED_LISTS))
def test_peft_alone_accepts_the_seed_lists_silently(spec_key):
    """The failure we guard against: PEFT adapts a subset and carries on (no exception)."""
    model = tiny_model(spec_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=SEED_LISTS[spec_key]))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and not any("experts" in n or "qkv_proj" in n or "gate_up_proj" in n for n in names)


@pytest.mark.parametrize("spec_key", list(SEED_LISTS))
def test_preflight_refuses_the_seed_lists_and_names_the_real_targets(spec_key):
    spec = SPECS[spec_key]
    with pytest.raises(PreflightError) as err:
        apply_adapter(
            tiny_model(spec_key),
            spec,
            AdapterConfig(targets=SEED_LISTS[spec_key], dropout=0.0),
            ModelConfig(),
            preflight=PreflightConfig(),
        )
    message = str(err.value)
    for needle in MUST_NAME[spec_key]:
        assert needle in message, (needle, message)
    assert "preflight.allow_unmatched_targets=true" in message
    matched = match_targets(tiny_model(spec_key), SEED_LISTS[spec_key], [])
    for pattern in matched.unmatched():  # every dead name gets its own line
        assert f"'{pattern}' matches nothing" in message


def test_override_lets_a_partial_list_through():
    spec = SPECS["phi3.5-mini"]
    model = apply_adapter(
        tiny_model("phi3.5-mini"),
        spec,
        AdapterConfig(targets=SEED_LISTS["phi3.5-mini"], dropout=0.0),
        ModelConfig(),
        preflight=PreflightConfig(allow_unmatched_targets=True),
    )
    assert any("o_proj.lora_A" in n for n, _ in model.named_parameters())


def test_matching_follows_peft_rules():
    assert peft_matches("model.layers.0.self_attn.o_proj", "o_proj")
    assert peft_matches("model.layers.0.mlp.experts.down_proj", "mlp.experts.down_proj")
    assert not peft_matches("model.layers.0.mlp.gate_up_proj", "up_proj")  # suffixes start after a dot
    match = match_targets(tiny_model("phi3.5-moe"), ["o_proj", "down_proj"], ["mlp.experts.down_proj"])
    assert len(match.modules["o_proj"]) == 2 and match.modules["down_proj"] == []  # a 3-D parameter is no module
    assert match.parameters["mlp.experts.down_proj"] == [
        "model.layers.0.mlp.experts.down_proj",
        "model.layers.1.mlp.experts.down_proj",
    ]


def test_layer_types_collapse_layer_indices():
    assert layer_type("base_model.model.model.layers.11.self_attn.qkv_proj") == "layers.*.self_attn.qkv_proj"
    assert group_by_layer_type(["model.layers.0.mlp.fc1", "model.layers.1.mlp.fc1", "lm_head"]) == {
        "layers.*.mlp.fc1": 2,
        "lm_head": 1,
    }
