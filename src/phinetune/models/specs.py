"""Everything phinetune knows about each Phi model, as data: one ModelSpec per model.

Module names are those of the native transformers (v5) implementations, not the old remote code:
Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; Phi-2 uses `dense` for the
attention output; Phi-3.5-MoE stores its experts as fused 3-D parameters (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`), which LoRA reaches only through PEFT `target_parameters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

PHI3_ATTN = ["qkv_proj", "o_proj"]
PHI3_MLP = ["gate_up_proj", "down_proj"]
PHI2_ATTN = ["q_proj", "k_proj", "v_proj", "dense"]
PHI2_MLP = ["fc1", "fc2"]
MOE_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MOE_EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


@dataclass(frozen=True)
class LoraPreset:
    """What one named target preset adapts: Linear modules and/or raw (3-D) parameters."""

    modules: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()


def _presets(attn: list[str], mlp: list[str], experts: Optional[list[str]] = None) -> dict[str, LoraPreset]:
    presets = {
        "attention": LoraPreset(tuple(attn)),
        "mlp": LoraPreset(tuple(mlp), tuple(experts or ())),
        "all-linear": LoraPreset(tuple(attn + mlp), tuple(experts or ())),
    }
    if experts:
        presets["experts"] = LoraPreset((), tuple(experts))
    return presets


@dataclass(frozen=True)
class ModelSpec:
    key: str
    hub_id: Optional[str]
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rope_scaling: Optional[str]
    template: str  # file in phinetune/templates
    end_of_turn: str  # token closing every assistant turn; must be trained
    stop_tokens: tuple[str, ...]
    lora_presets: dict[str, LoraPreset]
    default_preset: str = "all-linear"
    num_experts: int = 0
    experts_per_token: int = 0
    pad_policy: str = "existing"  # existing: reuse the tokenizer's pad; add: add a dedicated pad token
    added_tokens: tuple[str, ...] = ()  # tokens to add to the tokenizer before training (Phi-2 ChatML)
    resize_multiple: int = 0  # pad the embedding to a multiple of this after adding tokens
    dtypes: tuple[str, ...] = ("bf16", "fp32")
    refused_dtypes: dict[str, str] = field(default_factory=dict)
    tie_word_embeddings: bool = False
    partial_rotary_factor: float = 1.0
    notes: str = ""


_PHI3_COMMON = dict(
    architecture="Phi3ForCausalLM", model_type="phi3", hidden_size=3072, num_layers=32, num_heads=32,
    num_kv_heads=32, intermediate_size=8192, vocab_size=32064, end_of_turn="<|end|>",
    stop_tokens=("<|end|>", "<|endoftext|>"), lora_presets=_presets(PHI3_ATTN, PHI3_MLP),
    dtypes=("bf16", "fp16", "fp32"),
)

SPECS: dict[str, ModelSpec] = {
    "phi2": ModelSpec(
        key="phi2", hub_id="microsoft/phi-2", architecture="PhiForCausalLM", model_type="phi",
        hidden_size=2560, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=10240,
        vocab_size=51200, context_length=2048, rope_scaling=None, template="chatml.jinja",
        end_of_turn="<|im_end|>", stop_tokens=("<|im_end|>", "<|endoftext|>"),
        lora_presets=_presets(PHI2_ATTN, PHI2_MLP), pad_policy="add",
        added_tokens=("<|im_start|>", "<|im_end|>", "<PAD>"), resize_multiple=64,
        dtypes=("bf16", "fp32"), partial_rotary_factor=0.4,
        refused_dtypes={"fp16": "Phi-2 overflows to NaN losses in fp16 (reported by the Phinetuning 2.0 seed); use bf16 or fp32"},
        notes="Base model with no chat format: ChatML tokens are added and the new embedding/lm_head rows trained.",
    ),
    "phi3-mini-4k": ModelSpec(key="phi3-mini-4k", hub_id="microsoft/Phi-3-mini-4k-instruct", context_length=4096,
                              rope_scaling=None, template="phi3.jinja", **_PHI3_COMMON),
    "phi3-mini-128k": ModelSpec(key="phi3-mini-128k", hub_id="microsoft/Phi-3-mini-128k-instruct", context_length=131072,
                                rope_scaling="longrope", template="phi3-128k.jinja", **_PHI3_COMMON),
    "phi3.5-mini": ModelSpec(key="phi3.5-mini", hub_id="microsoft/Phi-3.5-mini-instruct", context_length=131072,
                             rope_scaling="longrope", template="phi3.5.jinja", **_PHI3_COMMON),
    "phi3.5-moe": ModelSpec(
        key="phi3.5-moe", hub_id="microsoft/Phi-3.5-MoE-instruct", architecture="PhimoeForCausalLM",
        model_type="phimoe", hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        intermediate_size=6400, vocab_size=32064, context_length=131072, rope_scaling="longrope",
        template="phi3.5.jinja", end_of_turn="<|end|>", stop_tokens=("<|end|>", "<|endoftext|>"),
        lora_presets=_presets(MOE_ATTN, [], MOE_EXPERTS), num_experts=16, experts_per_token=2,
        dtypes=("bf16", "fp32"),
    ),
    "phi4-mini": ModelSpec(
        key="phi4-mini", hub_id="microsoft/Phi-4-mini-instruct", architecture="Phi3ForCausalLM",
        model_type="phi3", hidden_size=3072, num_layers=32, num_heads=24, num_kv_heads=8,
        intermediate_size=8192, vocab_size=200064, context_length=131072, rope_scaling="longrope",
        template="phi4.jinja", end_of_turn="<|end|>", stop_tokens=("<|end|>", "<|endoftext|>"),
        lora_presets=_presets(PHI3_ATTN, PHI3_MLP), tie_word_embeddings=True, partial_rotary_factor=0.75,
        dtypes=("bf16", "fp32"),
    ),
}

# Generic fallback for any other Hub causal LM: PEFT's own "all-linear" discovery, chat template from
# the tokenizer, eos as end of turn.
GENERIC = ModelSpec(
    key="generic", hub_id=None, architecture="AutoModelForCausalLM", model_type="unknown", hidden_size=0,
    num_layers=0, num_heads=0, num_kv_heads=0, intermediate_size=0, vocab_size=0, context_length=0,
    rope_scaling=None, template="", end_of_turn="", stop_tokens=(),
    lora_presets={"all-linear": LoraPreset(("all-linear",))},
)

# Built-in tiny models: same architecture and chat format as the real ones, random weights, no download.
TINY_MODELS: dict[str, str] = {"tiny-phi3": "phi3-mini-4k", "tiny-phi2": "phi2", "tiny-phimoe": "phi3.5-moe", "tiny-phi4": "phi4-mini"}

_BY_HUB_ID = {spec.hub_id.lower(): spec for spec in SPECS.values() if spec.hub_id}


def get_spec(name: str, spec_key: Optional[str] = None) -> ModelSpec:
    """The spec for a model name (hub id, tiny-* name or spec key), or the generic fallback."""
    if spec_key:
        if spec_key not in SPECS:
            from phinetune.errors import ConfigError

            raise ConfigError(f"model.spec '{spec_key}' is unknown; choose one of {', '.join(SPECS)}")
        return SPECS[spec_key]
    if name in TINY_MODELS:
        return SPECS[TINY_MODELS[name]]
    if name in SPECS:
        return SPECS[name]
    return _BY_HUB_ID.get(name.lower().rstrip("/"), GENERIC)


def spec_from_config(config_json: dict) -> ModelSpec:
    """Guess the spec from a local config.json (architecture + sizes), falling back to generic."""
    arch = (config_json.get("architectures") or [""])[0]
    for spec in SPECS.values():
        if (spec.architecture.lower() == arch.lower() and spec.vocab_size == config_json.get("vocab_size")
                and spec.num_heads == config_json.get("num_attention_heads")
                and (spec.context_length == config_json.get("max_position_embeddings"))):
            return spec
    return GENERIC
