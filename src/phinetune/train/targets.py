"""Which modules and parameters a LoRA target list reaches, checked on the base model BEFORE PEFT runs.

Why by hand: PEFT raises only when a list matches nothing at all; when some names match (a commonly
copied Phi-3.5-mini list reaches o_proj/down_proj but not qkv_proj/gate_up_proj) it proceeds silently. We match
each name with PEFT's own rule (exact name, or a suffix after a dot) so every dead name is caught, and the
model spec turns it into "you meant X".
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from phinetune.models.specs import ModelSpec

_LAYER_INDEX = re.compile(r"\.\d+\.")


@dataclass
class TargetMatch:
    """Base-model names each pattern reaches: modules for target_modules, parameters for target_parameters."""

    modules: dict[str, list[str]] = field(default_factory=dict)
    parameters: dict[str, list[str]] = field(default_factory=dict)

    def unmatched(self) -> list[str]:
        return [p for p, hits in {**self.modules, **self.parameters}.items() if not hits]


def peft_matches(name: str, pattern: str) -> bool:
    """PEFT's matching rule for list entries: the full name, or a suffix that starts after a dot."""
    return name == pattern or name.endswith("." + pattern)


def match_targets(model: nn.Module, modules: list[str], parameters: list[str]) -> TargetMatch:
    module_names = [n for n, m in model.named_modules() if n and _adaptable(m)]
    param_names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    return TargetMatch(
        modules={pat: [n for n in module_names if peft_matches(n, pat)] for pat in modules},
        parameters={pat: [n for n in param_names if peft_matches(n, pat)] for pat in parameters},
    )


def _adaptable(module: nn.Module) -> bool:
    # What LoRA's target_modules can wrap: Linear (also bitsandbytes' Linear4bit, a Linear subclass),
    # Embedding, Conv and GPT-2 style Conv1D.
    return isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)) or type(module).__name__ == "Conv1D"


def layer_type(name: str) -> str:
    """`model.layers.3.self_attn.qkv_proj` -> `layers.*.self_attn.qkv_proj`: one row per layer type."""
    name = name.removeprefix("base_model.model.").removeprefix("model.")
    return _LAYER_INDEX.sub(".*.", name)


def group_by_layer_type(names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for n in names:
        counts[layer_type(n)] += 1
    return dict(counts)


def unmatched_message(pattern: str, spec: ModelSpec, kind: str = "module") -> str:
    """One sentence naming the dead target and the real names for this model."""
    hint = spec.wrong_names.get(pattern)
    meant = f"; in {spec.key} that is {hint}" if hint else ""
    preset = spec.lora_presets.get("all-linear")
    real = ""
    if preset and spec.key != "generic":
        real = f"; the real targets are modules [{', '.join(preset.modules)}]"
        if preset.parameters:
            real += f" and target_parameters [{', '.join(preset.parameters)}]"
        real += f" (presets: {', '.join(spec.lora_presets)})"
    return (
        f"LoRA target {kind} '{pattern}' matches nothing in {spec.key}{meant}{real} "
        f"(override: preflight.allow_unmatched_targets=true)"
    )


def target_problems(match: TargetMatch, spec: ModelSpec) -> list[str]:
    return [unmatched_message(p, spec) for p, hits in match.modules.items() if not hits] + [
        unmatched_message(p, spec, "parameter") for p, hits in match.parameters.items() if not hits
    ]
