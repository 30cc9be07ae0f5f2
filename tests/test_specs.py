"""Each LoRA preset of each of the six models adapts exactly the intended modules/parameters, checked
parameter by parameter on tiny random-weight versions of the real architectures."""

from __future__ import annotations

import pytest
import torch

from phinetune.config.schema import AdapterConfig, ModelConfig
from phinetune.models.specs import GENERIC, SPECS, get_spec, spec_from_config
from phinetune.train.adapter import apply_adapter
from phinetune.train.preflight import trained_target

ATTN3, MLP3 = {"self_attn.qkv_proj", "self_attn.o_proj"}, {"mlp.gate_up_proj", "mlp.down_proj"}
ATTN2, MLP2 = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense"}, {"mlp.fc1", "mlp.fc2"}
ATTN_MOE = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
EXPERTS = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
PHI3 = {"attention": ATTN3, "mlp": MLP3, "all-linear": ATTN3 | MLP3}
# Written out by hand from the transformers modeling files, not derived from the specs under test.
EXPECTED = {
    "phi2": {"attention": ATTN2, "mlp": MLP2, "all-linear": ATTN2 | MLP2},
    "phi3-mini-4k": PHI3,
    "phi3-mini-128k": PHI3,
    "phi3.5-mini": PHI3,
    "phi4-mini": PHI3,
    "phi4-mini-reasoning": PHI3,
    "phi4": PHI3,
    "phi4-reasoning": PHI3,
    "phi4-reasoning-plus": PHI3,
    "phi3-medium-4k": PHI3,
    "phi3-medium-128k": PHI3,
    "phi3.5-moe": {"attention": ATTN_MOE, "mlp": EXPERTS, "experts": EXPERTS, "all-linear": ATTN_MOE | EXPERTS},
}


def _tiny_signature(key: str) -> tuple:
    # What tiny_config builds from a spec: specs that agree on these give the same tiny model, tested once.
    spec = SPECS[key]
    return spec.model_type, spec.num_kv_heads == spec.num_heads, spec.tie_word_embeddings, spec.partial_rotary_factor


_FIRST = {}
for _key in EXPECTED:
    _FIRST.setdefault(_tiny_signature(_key), _key)
CASES = [
    (key, preset) for key, presets in EXPECTED.items() if _FIRST[_tiny_signature(key)] == key for preset in presets
]
LAYERS = 2


def tiny_model(spec_key: str):
    from transformers import AutoModelForCausalLM

    from phinetune.models.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(
        SPECS[spec_key], 256, dict(bos_token_id=0, eos_token_id=0, pad_token_id=0), num_hidden_layers=LAYERS
    )
    return AutoModelForCausalLM.from_config(config)


def test_every_spec_has_its_presets_and_facts():
    assert set(SPECS) == set(EXPECTED)
    for key, spec in SPECS.items():
        assert set(spec.lora_presets) == set(EXPECTED[key]), key
        assert spec.hub_id.startswith("microsoft/") and spec.end_of_turn and spec.template
        assert spec.rope_scaling in (None, "longrope")
        # longrope stretches a 4k original context; Phi-4 was trained at 16k/32k directly (no scaling)
        assert (spec.rope_scaling is None) == (
            spec.context_length <= 4096 or spec.key.startswith("phi4-reasoning") or spec.key == "phi4"
        )
    assert SPECS["phi3.5-moe"].lora_presets["experts"].parameters == (
        "mlp.experts.gate_up_proj",
        "mlp.experts.down_proj",
    )
    assert SPECS["phi3.5-moe"].lora_presets["experts"].modules == ()
    assert "fp16" in SPECS["phi2"].refused_dtypes and "NaN" in SPECS["phi2"].refused_dtypes["fp16"]


@pytest.mark.parametrize("spec_key,preset", CASES)
def test_preset_adapts_exactly_the_intended_targets(spec_key, preset):
    spec = SPECS[spec_key]
    model = apply_adapter(tiny_model(spec_key), spec, AdapterConfig(targets=preset, r=4, dropout=0.0), ModelConfig())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)  # nothing else unfrozen
    adapted = {trained_target(model, n)[0] for n in trainable}
    expected = {f"model.layers.{i}.{t}" for i in range(LAYERS) for t in EXPECTED[spec_key][preset]}
    assert adapted == expected
    # Behaviour, not just names: two optimizer steps change every LoRA parameter and no base weight.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(1, 256, (2, 12))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n


def test_moe_expert_lora_spans_all_experts():
    spec = SPECS["phi3.5-moe"]
    model = apply_adapter(
        tiny_model("phi3.5-moe"), spec, AdapterConfig(targets="experts", r=4, dropout=0.0), ModelConfig()
    )
    experts = model.base_model.model.model.layers[0].mlp.experts
    wrappers = {}
    module = experts
    while hasattr(module, "parameter_name"):  # PEFT nests one ParamWrapper per targeted parameter
        wrappers[module.parameter_name] = module
        module = module.base_layer
    assert set(wrappers) == {"gate_up_proj", "down_proj"}
    n_experts, two_i, h = module.gate_up_proj.shape
    assert wrappers["gate_up_proj"].lora_A["default"].weight.shape == (4 * n_experts, h)
    assert wrappers["gate_up_proj"].lora_B["default"].weight.shape == (two_i, 4 * n_experts)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "router" in n)


def test_moe_experts_refuse_lora_dropout_with_a_reason():
    from phinetune.errors import ConfigError

    with pytest.raises(ConfigError, match="adapter.dropout=0"):
        apply_adapter(
            tiny_model("phi3.5-moe"), SPECS["phi3.5-moe"], AdapterConfig(targets="experts", dropout=0.05), ModelConfig()
        )


def test_spec_lookup_by_name_hub_id_and_config():
    assert get_spec("microsoft/Phi-3.5-MoE-instruct").key == "phi3.5-moe"
    assert get_spec("tiny-phi2").key == "phi2"
    assert get_spec("someone/other-model") is GENERIC
    assert spec_from_config({"_name_or_path": "microsoft/Phi-3-mini-128k-instruct"}).key == "phi3-mini-128k"
    assert (
        spec_from_config(
            {
                "architectures": ["Phi3ForCausalLM"],
                "vocab_size": 32064,
                "num_attention_heads": 32,
                "max_position_embeddings": 131072,
            }
        ).key
        == "phi3.5-mini"
    )


# Figures written out by hand from the configs cited in docs/models.md (not read from the specs under test).
CITED = {
    # key: (layers, hidden, heads, kv heads, intermediate, vocab, context, rope theta)
    "phi4": (40, 5120, 40, 10, 17920, 100352, 16384, 250000.0),
    "phi4-reasoning": (40, 5120, 40, 10, 17920, 100352, 32768, 500000.0),
    "phi4-reasoning-plus": (40, 5120, 40, 10, 17920, 100352, 32768, 500000.0),
    "phi4-mini-reasoning": (32, 3072, 24, 8, 8192, 200064, 131072, 10000.0),
    "phi3-medium-4k": (40, 5120, 40, 10, 17920, 32064, 4096, 10000.0),
    "phi3-medium-128k": (40, 5120, 40, 10, 17920, 32064, 131072, 10000.0),
}


@pytest.mark.parametrize("key", list(CITED))
def test_new_specs_match_their_cited_configs(key):
    s = SPECS[key]
    assert (
        s.num_layers,
        s.hidden_size,
        s.num_heads,
        s.num_kv_heads,
        s.intermediate_size,
        s.vocab_size,
        s.context_length,
        s.rope_theta,
    ) == CITED[key]
    assert s.architecture == "Phi3ForCausalLM" and s.sources


def test_phi4_family_lookup():
    assert get_spec("microsoft/phi-4").key == "phi4" and get_spec("tiny-phi4-14b").key == "phi4"
    assert get_spec("microsoft/Phi-4-reasoning-plus").key == "phi4-reasoning-plus"
    assert spec_from_config({"_name_or_path": "microsoft/phi-4"}).key == "phi4"
    assert spec_from_config({"_name_or_path": "Phi-3-medium-128k-instruct"}).key == "phi3-medium-128k"
    assert (
        spec_from_config(
            {
                "architectures": ["Phi3ForCausalLM"],
                "vocab_size": 100352,
                "num_attention_heads": 40,
                "max_position_embeddings": 32768,
            }
        ).key
        == "phi4-reasoning"
    )


def test_reasoning_system_prompt_is_the_one_its_template_inserts():
    from phinetune.models.specs import PHI4_REASONING_PROMPT
    from phinetune.models.templates import read_template

    template = read_template(SPECS["phi4-reasoning"].template)
    assert f"<|im_start|>system<|im_sep|>{PHI4_REASONING_PROMPT}<|im_end|>" in template
    assert (
        PHI4_REASONING_PROMPT.startswith("You are Phi, a language model trained by Microsoft")
        and "<think>" in PHI4_REASONING_PROMPT
    )


def test_docs_table_lists_every_spec_with_its_tokens():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in doc.splitlines() if line.startswith("| `")}
    for key, spec in SPECS.items():
        row = rows[key]
        assert spec.hub_id in row and f"`{spec.template}`" in row and spec.end_of_turn.replace("|", "\\|") in row, key
        assert spec.pad_token.replace("|", "\\|") in row and f"{spec.num_layers} x {spec.hidden_size}" in row, key
