"""`phinetune inspect`: a model's size and shape, computed from a spec or a local config.json.

Parameter counts come from config arithmetic (no weights needed), so a 42B MoE is inspected in
milliseconds: total parameters, and active parameters per token (only `num_experts_per_tok` of the
experts run for each token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.models.hub import looks_like_path
from phinetune.models.specs import GENERIC, SPECS, TINY_MODELS, ModelSpec, closest_name, get_spec, spec_from_config

# How each architecture lays out a decoder layer (data, not branches): norms per layer and their kind,
# gated (SwiGLU: gate+up+down) or plain (fc1+fc2) MLP, and where the biases are.
LAYOUTS = {
    "phi": dict(norms=1, norm="layer", gated=False, mlp_bias=True, attention_bias=True, lm_head_bias=True),
    "phi3": dict(norms=2, norm="rms", gated=True, mlp_bias=False, attention_bias=False, lm_head_bias=False),
    "phimoe": dict(
        norms=2, norm="layer", gated=True, mlp_bias=False, attention_bias=None, lm_head_bias=None
    ),  # None: from config
}
DEFAULT_LAYOUT = LAYOUTS["phi3"]  # llama-style: what most other Hub causal LMs look like


@dataclass
class ParamCount:
    total: int
    active: int  # per token: only the routed experts count
    parts: dict[str, int] = field(default_factory=dict)  # embedding, attention, mlp/experts, router, norms, lm_head
    # Parameters in nn.Linear layers: what bitsandbytes NF4 quantizes. Fused 3-D expert matrices are NOT
    # Linear layers, so with transformers 5 an NF4-loaded Phi-3.5-MoE keeps its 40B expert weights in bf16.
    linear: int = 0


@dataclass
class ModelFacts:
    source: str  # spec key or config path
    config: dict
    spec: ModelSpec

    def get(self, key: str, default=None):
        return self.config.get(key, default) if self.config.get(key) is not None else default

    @property
    def head_dim(self) -> int:
        return self.get("head_dim") or self.get("hidden_size") // self.get("num_attention_heads")

    @property
    def kv_heads(self) -> int:
        return self.get("num_key_value_heads") or self.get("num_attention_heads")


def load_facts(target: str, spec_key: str | None = None) -> ModelFacts:
    """A spec key, tiny name or hub id of a known model, a config.json, or a folder holding one. `spec_key`
    names the spec when the caller knows it (a run folder records its base's)."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise PhinetuneError(
                f"{path} does not exist; pass a model spec key ({', '.join(SPECS)}), a Hub id, or a config.json"
            )
        try:
            config = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise PhinetuneError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        _require(config, path)
        return ModelFacts(str(path), config, get_spec(target, spec_key) if spec_key else spec_from_config(config))
    spec = get_spec(target, spec_key)
    if spec is GENERIC:
        if looks_like_path(target):
            raise PhinetuneError(
                f"{target} does not exist; pass a model folder or config.json that exists, a run folder, "
                f"or a model spec key ({', '.join(SPECS)})"
            )
        close = closest_name(target, spec_keys=True)
        raise PhinetuneError(
            f"'{target}' is not a known model; "
            + (f"did you mean {close}? " if close else "")
            + f"pass one of {', '.join(list(SPECS) + list(TINY_MODELS))}, a Phi Hub id, or the path of a config.json"
        )
    return ModelFacts(spec.key, spec.as_config(), spec)


def _require(config: dict, path: Path) -> None:
    missing = [
        k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if not config.get(k)
    ]
    if missing:
        raise PhinetuneError(
            f"{path}: field(s) {', '.join(missing)} missing; expected a transformers config.json of a causal LM"
        )


def count_params(facts: ModelFacts) -> ParamCount:
    layout = LAYOUTS.get(facts.get("model_type"), DEFAULT_LAYOUT)
    h, layers, vocab = facts.get("hidden_size"), facts.get("num_hidden_layers"), facts.get("vocab_size")
    inter = facts.get("intermediate_size") or 4 * h
    q, kv = facts.get("num_attention_heads") * facts.head_dim, facts.kv_heads * facts.head_dim
    attn_bias = layout["attention_bias"] if layout["attention_bias"] is not None else bool(facts.get("attention_bias"))
    attention = h * (q + 2 * kv) + q * h + (q + 2 * kv + h if attn_bias else 0)
    matrices = 3 if layout["gated"] else 2
    expert = matrices * h * inter + ((inter + h) if layout["mlp_bias"] else 0)
    experts, routed = facts.get("num_local_experts") or 0, facts.get("num_experts_per_tok") or 0
    norm = h * (2 if layout["norm"] == "layer" else 1)
    embed = vocab * h
    head_bias = layout["lm_head_bias"] if layout["lm_head_bias"] is not None else bool(facts.get("lm_head_bias"))
    head = 0 if facts.get("tie_word_embeddings") else vocab * h + (vocab if head_bias else 0)
    if experts:
        parts = dict(
            embedding=embed,
            attention=layers * attention,
            experts=layers * experts * expert,
            router=layers * h * experts,
            norms=layers * layout["norms"] * norm + norm,
            lm_head=head,
        )
        active = sum(parts.values()) - layers * (experts - routed) * expert
    else:
        parts = dict(
            embedding=embed,
            attention=layers * attention,
            mlp=layers * expert,
            norms=layers * layout["norms"] * norm + norm,
            lm_head=head,
        )
        active = sum(parts.values())
    linear = parts["attention"] + parts.get("mlp", 0)
    return ParamCount(sum(parts.values()), active, parts, linear)


# (in, out) features of each LoRA-targetable matrix per layer, by architecture; "param:" names are fused
# 3-D expert parameters (one matrix per expert). Used to count LoRA parameters without building a model.
def _shapes_phi3(h, q, kv, inter, experts):
    return {
        "qkv_proj": (h, q + 2 * kv, 1),
        "o_proj": (q, h, 1),
        "gate_up_proj": (h, 2 * inter, 1),
        "down_proj": (inter, h, 1),
    }


def _shapes_phi(h, q, kv, inter, experts):
    return {
        "q_proj": (h, q, 1),
        "k_proj": (h, kv, 1),
        "v_proj": (h, kv, 1),
        "dense": (q, h, 1),
        "fc1": (h, inter, 1),
        "fc2": (inter, h, 1),
    }


def _shapes_phimoe(h, q, kv, inter, experts):
    return {
        "q_proj": (h, q, 1),
        "k_proj": (h, kv, 1),
        "v_proj": (h, kv, 1),
        "o_proj": (q, h, 1),
        "mlp.experts.gate_up_proj": (h, 2 * inter, experts),
        "mlp.experts.down_proj": (inter, h, experts),
    }


SHAPES = {"phi": _shapes_phi, "phi3": _shapes_phi3, "phimoe": _shapes_phimoe}


def lora_params(facts: ModelFacts, preset: str = "all-linear", r: int = 16) -> int:
    """LoRA parameters a preset adds: r*(in+out) per matrix; PEFT's expert LoRA is r*experts wide."""
    shapes_fn = SHAPES.get(facts.get("model_type"), _shapes_phi3)
    h, inter = facts.get("hidden_size"), facts.get("intermediate_size") or 4 * facts.get("hidden_size")
    q, kv = facts.get("num_attention_heads") * facts.head_dim, facts.kv_heads * facts.head_dim
    shapes = shapes_fn(h, q, kv, inter, facts.get("num_local_experts") or 1)
    chosen = facts.spec.lora_presets.get(preset)
    names = (
        (list(chosen.modules) + list(chosen.parameters))
        if chosen and chosen.modules != ("all-linear",)
        else list(shapes)
    )
    per_layer = sum(r * n * (i + o) for name, (i, o, n) in shapes.items() if name in names)
    return per_layer * facts.get("num_hidden_layers")


def rope_summary(facts: ModelFacts) -> str:
    rope = facts.get("rope_scaling") or facts.get("rope_parameters") or {}
    kind = rope.get("type") or rope.get("rope_type") if isinstance(rope, dict) else rope
    theta = facts.get("rope_theta") or (rope.get("rope_theta") if isinstance(rope, dict) else None) or 10000.0
    partial = (
        facts.get("partial_rotary_factor")
        or (rope.get("partial_rotary_factor") if isinstance(rope, dict) else None)
        or 1.0
    )
    original = facts.get("original_max_position_embeddings") or (
        rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None
    )
    scaled = (
        f"{kind} scaling from {original:,} tokens"
        if kind and kind != "default" and original
        else (f"{kind} scaling" if kind and kind != "default" else "no scaling")
    )
    return f"RoPE theta {theta:g}, {scaled}, rotary on {partial:.0%} of each head"


def attention_summary(facts: ModelFacts) -> str:
    heads, kv = facts.get("num_attention_heads"), facts.kv_heads
    layout = "MHA" if heads == kv else ("MQA" if kv == 1 else f"GQA, {heads // kv} query heads per kv head")
    return f"{heads} heads x {facts.head_dim} dims, {kv} kv heads ({layout})"


def analysis(facts: ModelFacts) -> dict[str, str]:
    """Ordered label -> value lines, printed by `print_analysis` and checked by the tests."""
    spec, count = facts.spec, count_params(facts)
    experts = facts.get("num_local_experts")
    lines = {
        "source": facts.source,
        "spec": spec.key + (f" ({spec.hub_id})" if spec.hub_id else ""),
        "architecture": f"{(facts.get('architectures') or ['?'])[0]} (model_type {facts.get('model_type')})",
        "parameters": f"{human(count.total)} total, {human(count.active)} active per token",
        "breakdown": ", ".join(f"{k} {human(v)}" for k, v in count.parts.items() if v),
        "layers": f"{facts.get('num_hidden_layers')} x hidden {facts.get('hidden_size')}, intermediate {facts.get('intermediate_size')}"
        + (f", {experts} experts ({facts.get('num_experts_per_tok')} active per token)" if experts else ""),
        "attention": attention_summary(facts),
        "context": f"{facts.get('max_position_embeddings'):,} tokens; {rope_summary(facts)}",
        "vocab": f"{facts.get('vocab_size'):,}"
        + (" (embedding tied to lm_head)" if facts.get("tie_word_embeddings") else ""),
        "special tokens": special_tokens(facts),
        "chat template": spec.template or "the tokenizer's own",
        "LoRA presets": "; ".join(
            f"{name}: {', '.join(p.modules + tuple(f'param:{x}' for x in p.parameters))}"
            for name, p in spec.lora_presets.items()
        ),
        "dtypes": ", ".join(spec.dtypes) + "".join(f"; {d} refused: {why}" for d, why in spec.refused_dtypes.items()),
    }
    if spec.reasons:
        lines["reasoning"] = f"writes {spec.reasoning_tags[0]}trace{spec.reasoning_tags[1]} before each answer" + (
            "; its template inserts the model card's system prompt"
            if spec.system_prompt_in_template
            else f"; system prompt (model card): {spec.system_prompt}"
            if spec.system_prompt
            else ""
        )
    if spec.tool_format:
        lines["tools"] = (
            f"{spec.tool_format}: definitions in the system turn (<|tool|>...<|/tool|>), calls as <|tool_call|>[...]<|/tool_call|>"
        )
    if spec.notes:
        lines["notes"] = spec.notes
    if spec.sources:
        lines["sources"] = " | ".join(spec.sources)
    return lines


def special_tokens(facts: ModelFacts) -> str:
    spec = facts.spec
    ids = ", ".join(
        f"{k.removesuffix('_token_id')}={facts.get(k)}"
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        if facts.get(k) is not None
    )
    parts = [
        f"end of turn {spec.end_of_turn}" if spec.end_of_turn else "end of turn = eos",
        f"stop on {', '.join(spec.stop_tokens)}" if spec.stop_tokens else "",
        f"adds {', '.join(spec.added_tokens)} (pad policy: {spec.pad_policy})"
        if spec.added_tokens
        else (f"pad {spec.pad_token} (the shipped pad is eos)" if spec.pad_token else f"pad policy: {spec.pad_policy}"),
        ids,
    ]
    return "; ".join(p for p in parts if p)


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def print_analysis(facts: ModelFacts) -> None:
    """`phinetune inspect`: `analysis` as aligned label / value lines."""
    from phinetune.progress import console, escape

    for label, value in analysis(facts).items():
        console.print(f"[bold]{label:>15}[/bold]  {escape(str(value))}", markup=True, highlight=False)
