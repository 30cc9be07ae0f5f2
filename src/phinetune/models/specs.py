"""Everything phinetune knows about each Phi model, as data: one ModelSpec per model.

Module names are those of the native transformers (v5) implementations, not the old remote code:
Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; Phi-2 uses `dense` for the
attention output; Phi-3.5-MoE stores its experts as fused 3-D parameters (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`), which LoRA reaches only through PEFT `target_parameters`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

PHI3_ATTN = ["qkv_proj", "o_proj"]
PHI3_MLP = ["gate_up_proj", "down_proj"]
PHI2_ATTN = ["q_proj", "k_proj", "v_proj", "dense"]
PHI2_MLP = ["fc1", "fc2"]
MOE_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MOE_EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]

# Names people carry over from other architectures or from the old remote code, and what the native
# module is really called in this family. Used to turn "matches nothing" into "you meant X".
PHI3_WRONG = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "Wqkv": "qkv_proj",
    "query_key_value": "qkv_proj",
    "out_proj": "o_proj",
    "dense": "o_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
    "fc1": "gate_up_proj",
    "fc2": "down_proj",
    "w1": "gate_up_proj",
    "w3": "gate_up_proj",
    "w2": "down_proj",
}
PHI2_WRONG = {
    "Wqkv": "q_proj, k_proj, v_proj",
    "qkv_proj": "q_proj, k_proj, v_proj",
    "out_proj": "dense",
    "o_proj": "dense",
    "gate_up_proj": "fc1",
    "gate_proj": "fc1",
    "up_proj": "fc1",
    "down_proj": "fc2",
    "w1": "fc1",
    "w3": "fc1",
    "w2": "fc2",
}
MOE_WRONG = {
    "qkv_proj": "q_proj, k_proj, v_proj",
    "Wqkv": "q_proj, k_proj, v_proj",
    "dense": "o_proj",
    "out_proj": "o_proj",
    "w1": "target_parameters mlp.experts.gate_up_proj",
    "w3": "target_parameters mlp.experts.gate_up_proj",
    "w2": "target_parameters mlp.experts.down_proj",
    "gate_proj": "target_parameters mlp.experts.gate_up_proj",
    "up_proj": "target_parameters mlp.experts.gate_up_proj",
    "gate_up_proj": "target_parameters mlp.experts.gate_up_proj",
    "down_proj": "target_parameters mlp.experts.down_proj",
    "experts": "target_parameters mlp.experts.gate_up_proj, mlp.experts.down_proj",
    "gate": "mlp.router (the router; no preset adapts it: LoRA on a router shifts expert choice)",
}


@dataclass(frozen=True)
class LoraPreset:
    """What one named target preset adapts: Linear modules and/or raw (3-D) parameters."""

    modules: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()


def _presets(attn: list[str], mlp: list[str], experts: list[str] | None = None) -> dict[str, LoraPreset]:
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
    hub_id: str | None
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rope_scaling: str | None
    template: str  # file in phinetune/templates
    end_of_turn: str  # token closing every assistant turn; must be trained
    stop_tokens: tuple[str, ...]
    lora_presets: dict[str, LoraPreset]
    default_preset: str = "all-linear"
    wrong_names: dict[str, str] = field(default_factory=dict)  # name from elsewhere -> the real name here
    original_context: int = 0  # context the rope scaling stretches from (longrope)
    rope_theta: float = 10000.0
    attention_bias: bool = False
    lm_head_bias: bool = False
    norm: str = "rms"  # rms (weight) or layer (weight + bias): matters for parameter counts
    hidden_act: str = "silu"
    num_experts: int = 0
    experts_per_token: int = 0
    pad_policy: str = "existing"  # existing: reuse the tokenizer's pad; add: add a dedicated pad token
    # A token of the vocabulary used as pad instead of the tokenizer's own when that one is missing or is
    # eos/end-of-turn (Phi-4 ships pad = eos; torchtune's Phi-4 tokenizer pads with <|dummy_85|>, id 100349).
    pad_token: str = ""
    # The system prompt the model card prescribes; `system_prompt_in_template` when the chat template
    # inserts it by itself (Phi-4-reasoning), otherwise phinetune inserts it when a conversation has none.
    system_prompt: str = ""
    system_prompt_in_template: bool = False
    reasoning_tags: tuple[str, str] = ("<think>", "</think>")  # how a reasoning trace is written before the answer
    reasons: bool = False  # trained to write a reasoning trace before every answer
    tool_format: str = ""  # "phi4-mini": tools in the system turn, calls as <|tool_call|>[...]<|/tool_call|>
    sources: tuple[str, ...] = ()  # where each figure was checked (repo:path), shown by inspect and docs/models.md
    added_tokens: tuple[str, ...] = ()  # tokens to add to the tokenizer before training (Phi-2 ChatML)
    resize_multiple: int = 0  # pad the embedding to a multiple of this after adding tokens
    dtypes: tuple[str, ...] = ("bf16", "fp32")
    refused_dtypes: dict[str, str] = field(default_factory=dict)
    tie_word_embeddings: bool = False
    partial_rotary_factor: float = 1.0
    notes: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads if self.num_heads else 0

    def as_config(self) -> dict:
        """The spec's facts in the shape of a transformers config.json (one counting path for both)."""
        rope = (
            {"type": self.rope_scaling, "original_max_position_embeddings": self.original_context}
            if self.rope_scaling
            else None
        )
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.context_length,
            "original_max_position_embeddings": self.original_context or self.context_length,
            "rope_scaling": rope,
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "lm_head_bias": self.lm_head_bias,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token,
            "hidden_act": self.hidden_act,
        }


_PHI3_COMMON = dict(
    architecture="Phi3ForCausalLM",
    model_type="phi3",
    hidden_size=3072,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    intermediate_size=8192,
    vocab_size=32064,
    end_of_turn="<|end|>",
    stop_tokens=("<|end|>", "<|endoftext|>"),
    lora_presets=_presets(PHI3_ATTN, PHI3_MLP),
    dtypes=("bf16", "fp16", "fp32"),
    wrong_names=PHI3_WRONG,
)

PHI4_MINI_SOURCE = (
    "shared realdata: microsoft/onnxruntime-genai:test/python/fixtures/phi-4-mini/{config,tokenizer_config}.json"
)
_PHI4_MINI_COMMON = dict(
    architecture="Phi3ForCausalLM",
    model_type="phi3",
    hidden_size=3072,
    num_layers=32,
    num_heads=24,
    num_kv_heads=8,
    intermediate_size=8192,
    vocab_size=200064,
    context_length=131072,
    rope_scaling="longrope",
    original_context=4096,
    wrong_names=PHI3_WRONG,
    template="phi4.jinja",
    end_of_turn="<|end|>",
    stop_tokens=("<|end|>", "<|endoftext|>"),
    lora_presets=_presets(PHI3_ATTN, PHI3_MLP),
    tie_word_embeddings=True,
    partial_rotary_factor=0.75,
    dtypes=("bf16", "fp32"),
)
# Phi-4 (14B) and the reasoning models fine-tuned from it: Phi-3 architecture with GQA, no rope scaling,
# ChatML-style turns <|im_start|>ROLE<|im_sep|>CONTENT<|im_end|> (ids 100264/100266/100265).
_PHI4_COMMON = dict(
    architecture="Phi3ForCausalLM",
    model_type="phi3",
    hidden_size=5120,
    num_layers=40,
    num_heads=40,
    num_kv_heads=10,
    intermediate_size=17920,
    vocab_size=100352,
    rope_scaling=None,
    end_of_turn="<|im_end|>",
    stop_tokens=("<|im_end|>", "<|endoftext|>"),
    pad_token="<|dummy_85|>",
    lora_presets=_presets(PHI3_ATTN, PHI3_MLP),
    wrong_names=PHI3_WRONG,
    dtypes=("bf16", "fp32"),
)
PHI4_SOURCES = (
    "config: mehmetcc/pal:phi-4/config.json (copy of microsoft/phi-4 config.json, transformers 4.47.0)",
    "template: unslothai/unsloth:unsloth/chat_templates.py (phi4_template; not diffed against the Hub file); "
    "the first release's template (ggerganov/llama.cpp tests/test-chat-template.cpp, 'phi-4') gives the same tokens for a finished conversation",
    "tokens: pytorch/torchtune:torchtune/models/phi4/_tokenizer.py (eos <|im_end|> 100265, pad <|dummy_85|> 100349, "
    "<|im_start|> 100264, <|im_sep|> 100266)",
)
# The model card's reasoning system prompt; phi4-reasoning.jinja inserts it (tests check the two agree).
PHI4_REASONING_PROMPT = (
    "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise and "
    "accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, "
    "reassessment, reflection, backtracing, and iteration to develop well-considered thinking process. Please "
    "structure your response into two main sections: Thought and Solution using the specified format: <think> "
    "{Thought section} </think> {Solution section}. In the Thought section, detail your reasoning process in steps. "
    "Each step should include detailed considerations such as analysing questions, summarizing relevant findings, "
    "brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting "
    "previous steps. In the Solution section, based on various attempts, explorations, and reflections from the "
    "Thought section, systematically present the final solution that you deem correct. The Solution section should "
    "be logical, accurate, and concise and detail necessary steps needed to reach the conclusion. Now, try to solve "
    "the following question through the above guidelines:"
)
_PHI4_REASONING = dict(
    context_length=32768,
    rope_theta=500000.0,
    template="phi4-reasoning.jinja",
    reasons=True,
    system_prompt=PHI4_REASONING_PROMPT,
    system_prompt_in_template=True,
    notes="Phi-4 fine-tuned on reasoning traces (the -plus model adds RL): answers are <think>trace</think> then the "
    "solution. Its template inserts the model card's reasoning system prompt when a conversation has none.",
    sources=PHI4_SOURCES[2:]
    + (
        "config: 32k context and RoPE theta 500000 as read from a Phi-4-reasoning GGUF header + config.json in a "
        "public port's notes; model card 'Context length 32k tokens' "
        "(www.fitmyllm.com/model/phi-4-reasoning-14b mirrors it)",
        "template: reconstructed from a public copy of its chat_template (whose author added {% generation %} markers, "
        "removed here); the system prompt matches the model card and PhiCookBook copies",
    ),
    **_PHI4_COMMON,
)
PHI3_MEDIUM_CARD = (
    "model card chat format <|user|>\\n...<|end|>\\n<|assistant|>: "
    "YinanWusoymilk/hf-readme:training_and_application/readme_files/microsoft_Phi-3-medium-128k-instruct.md"
)
_PHI3_MEDIUM = dict(
    _PHI3_COMMON, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=10, intermediate_size=17920
)

SPECS: dict[str, ModelSpec] = {
    "phi2": ModelSpec(
        key="phi2",
        hub_id="microsoft/phi-2",
        architecture="PhiForCausalLM",
        model_type="phi",
        hidden_size=2560,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=10240,
        vocab_size=51200,
        context_length=2048,
        rope_scaling=None,
        template="chatml.jinja",
        end_of_turn="<|im_end|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        lora_presets=_presets(PHI2_ATTN, PHI2_MLP),
        pad_policy="add",
        wrong_names=PHI2_WRONG,
        attention_bias=True,
        lm_head_bias=True,
        norm="layer",
        hidden_act="gelu_new",
        added_tokens=("<|im_start|>", "<|im_end|>", "<PAD>"),
        resize_multiple=64,
        dtypes=("bf16", "fp32"),
        partial_rotary_factor=0.4,
        refused_dtypes={
            "fp16": "Phi-2 overflows to NaN losses in fp16 (as published Phi-2 fine-tunes report); use bf16 or fp32"
        },
        notes="Base model with no chat format: ChatML tokens are added and the new embedding/lm_head rows trained.",
    ),
    "phi3-mini-4k": ModelSpec(
        key="phi3-mini-4k",
        hub_id="microsoft/Phi-3-mini-4k-instruct",
        context_length=4096,
        rope_scaling=None,
        template="phi3.jinja",
        **_PHI3_COMMON,
    ),
    "phi3-mini-128k": ModelSpec(
        key="phi3-mini-128k",
        hub_id="microsoft/Phi-3-mini-128k-instruct",
        context_length=131072,
        rope_scaling="longrope",
        original_context=4096,
        template="phi3-128k.jinja",
        **_PHI3_COMMON,
    ),
    "phi3.5-mini": ModelSpec(
        key="phi3.5-mini",
        hub_id="microsoft/Phi-3.5-mini-instruct",
        context_length=131072,
        rope_scaling="longrope",
        original_context=4096,
        template="phi3.5.jinja",
        **_PHI3_COMMON,
    ),
    "phi3.5-moe": ModelSpec(
        key="phi3.5-moe",
        hub_id="microsoft/Phi-3.5-MoE-instruct",
        architecture="PhimoeForCausalLM",
        model_type="phimoe",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=6400,
        vocab_size=32064,
        context_length=131072,
        rope_scaling="longrope",
        original_context=4096,
        attention_bias=True,
        lm_head_bias=True,
        norm="layer",
        wrong_names=MOE_WRONG,
        template="phi3.5.jinja",
        end_of_turn="<|end|>",
        stop_tokens=("<|end|>", "<|endoftext|>"),
        lora_presets=_presets(MOE_ATTN, [], MOE_EXPERTS),
        num_experts=16,
        experts_per_token=2,
        dtypes=("bf16", "fp32"),
        notes="16 experts, 2 active per token. Experts are fused 3-D parameters: LoRA reaches them only through "
        "PEFT target_parameters, which does not support LoRA dropout (set adapter.dropout=0).",
    ),
    "phi4-mini": ModelSpec(
        key="phi4-mini",
        hub_id="microsoft/Phi-4-mini-instruct",
        tool_format="phi4-mini",
        sources=(PHI4_MINI_SOURCE,),
        **_PHI4_MINI_COMMON,
    ),
    "phi4-mini-reasoning": ModelSpec(
        key="phi4-mini-reasoning",
        hub_id="microsoft/Phi-4-mini-reasoning",
        reasons=True,
        system_prompt="Your name is Phi, an AI math expert developed by Microsoft.",
        notes="Phi-4-mini fine-tuned on math reasoning traces: answers start with <think>...</think>. The model card's "
        "chat format puts its system prompt first; phinetune inserts it when a conversation has none.",
        sources=(
            PHI4_MINI_SOURCE,
            "model card chat format and system prompt: https://huggingface.co/microsoft/Phi-4-mini-reasoning "
            "(mirrored at model.aibase.com/en/models/details/1924737630994698240); architecture as Phi-4-mini (vocab 200064)",
        ),
        **_PHI4_MINI_COMMON,
    ),
    "phi4": ModelSpec(
        key="phi4",
        hub_id="microsoft/phi-4",
        context_length=16384,
        rope_theta=250000.0,
        template="phi4-chatml.jinja",
        sources=PHI4_SOURCES,
        **_PHI4_COMMON,
    ),
    "phi4-reasoning": ModelSpec(key="phi4-reasoning", hub_id="microsoft/Phi-4-reasoning", **_PHI4_REASONING),
    "phi4-reasoning-plus": ModelSpec(
        key="phi4-reasoning-plus", hub_id="microsoft/Phi-4-reasoning-plus", **_PHI4_REASONING
    ),
    "phi3-medium-4k": ModelSpec(
        key="phi3-medium-4k",
        hub_id="microsoft/Phi-3-medium-4k-instruct",
        context_length=4096,
        rope_scaling=None,
        template="phi3.jinja",
        sources=(
            "dotnet/machinelearning:src/Microsoft.ML.GenAI.Phi/Resource/Config/phi-3-medium-4k-instruct-config.json",
            PHI3_MEDIUM_CARD,
        ),
        **_PHI3_MEDIUM,
    ),
    "phi3-medium-128k": ModelSpec(
        key="phi3-medium-128k",
        hub_id="microsoft/Phi-3-medium-128k-instruct",
        context_length=131072,
        rope_scaling="longrope",
        original_context=4096,
        template="phi3-128k.jinja",
        sources=(
            "dotnet/machinelearning:src/Microsoft.ML.GenAI.Phi/Resource/Config/phi-3-medium-128k-instruct-config.json",
            PHI3_MEDIUM_CARD,
        ),
        **_PHI3_MEDIUM,
    ),
}

# Generic fallback for any other Hub causal LM: PEFT's own "all-linear" discovery, chat template from
# the tokenizer, eos as end of turn.
GENERIC = ModelSpec(
    key="generic",
    hub_id=None,
    architecture="AutoModelForCausalLM",
    model_type="unknown",
    hidden_size=0,
    num_layers=0,
    num_heads=0,
    num_kv_heads=0,
    intermediate_size=0,
    vocab_size=0,
    context_length=0,
    rope_scaling=None,
    template="",
    end_of_turn="",
    stop_tokens=(),
    lora_presets={"all-linear": LoraPreset(("all-linear",))},
)

# Built-in tiny models: same architecture and chat format as the real ones, random weights, no download.
TINY_MODELS: dict[str, str] = {
    "tiny-phi3": "phi3-mini-4k",
    "tiny-phi2": "phi2",
    "tiny-phimoe": "phi3.5-moe",
    "tiny-phi4": "phi4-mini",
    "tiny-phi4-14b": "phi4",
    "tiny-phi4-reasoning": "phi4-reasoning",
    "tiny-phi4-mini-reasoning": "phi4-mini-reasoning",
    "tiny-phi3-medium": "phi3-medium-4k",
}

_BY_HUB_ID = {spec.hub_id.lower(): spec for spec in SPECS.values() if spec.hub_id}


def get_spec(name: str, spec_key: str | None = None) -> ModelSpec:
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


def closest_name(name: str, spec_keys: bool = False) -> str | None:
    """The known model name `name` most likely misspells: a Phi Hub id of a spec or a built-in tiny name (and,
    where the caller accepts them, a spec key), compared without case; None when nothing is close."""
    hub_ids = [s.hub_id for s in SPECS.values() if s.hub_id]
    names = hub_ids + list(TINY_MODELS) + (list(SPECS) if spec_keys else [])
    by_lower = {n.lower(): n for n in names}
    if "/" not in name:  # `Phi-4-mini-instruct` without its owner
        by_lower.update({h.lower().split("/")[1]: h for h in hub_ids})
    match = difflib.get_close_matches(name.lower().rstrip("/"), list(by_lower), n=1, cutoff=0.8)
    return by_lower[match[0]] if match and by_lower[match[0]] != name else None


def spec_from_config(config_json: dict) -> ModelSpec:
    """Guess the spec from a local config.json, falling back to generic.

    The name recorded in the config (`_name_or_path`) decides first, because Phi-3-mini-128k and
    Phi-3.5-mini share every size and differ only in their chat template; then architecture + sizes.
    """
    recorded = str(config_json.get("_name_or_path", "")).lower().rstrip("/").rsplit("/", 1)[-1]
    for spec in SPECS.values():
        if spec.hub_id and recorded and spec.hub_id.lower().rsplit("/", 1)[-1] == recorded:
            return spec
    arch = (config_json.get("architectures") or [""])[0]
    for spec in sorted(SPECS.values(), key=lambda s: s.key != "phi3.5-mini"):  # the newer release wins a tie
        if (
            spec.architecture.lower() == arch.lower()
            and spec.vocab_size == config_json.get("vocab_size")
            and spec.num_heads == config_json.get("num_attention_heads")
            and (spec.context_length == config_json.get("max_position_embeddings"))
        ):
            return spec
    return GENERIC
