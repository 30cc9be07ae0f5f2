"""Turn the adapter config + model spec into a PEFT model (or a fully trainable one)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from phinetune.config.schema import AdapterConfig, ModelConfig
from phinetune.errors import ConfigError
from phinetune.models.specs import ModelSpec


@dataclass
class Targets:
    modules: list[str]
    parameters: list[str]


def resolve_targets(spec: ModelSpec, cfg: AdapterConfig) -> Targets:
    """A preset name expands to the spec's real module/parameter names; a list is taken as given."""
    if isinstance(cfg.targets, str):
        preset = spec.lora_presets.get(cfg.targets)
        if preset is None:
            raise ConfigError(f"adapter.targets '{cfg.targets}' is not a preset of {spec.key}; choose one of {', '.join(spec.lora_presets)} or give a list of module names")
        return Targets(list(preset.modules), list(preset.parameters) + list(cfg.target_parameters))
    return Targets(list(cfg.targets), list(cfg.target_parameters))


def lora_config(spec: ModelSpec, cfg: AdapterConfig) -> LoraConfig:
    targets = resolve_targets(spec, cfg)
    modules = targets.modules[0] if targets.modules == ["all-linear"] else targets.modules
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=modules or None,
                      target_parameters=targets.parameters or None, modules_to_save=cfg.modules_to_save or None,
                      task_type="CAUSAL_LM", bias="none")


def apply_adapter(model, spec: ModelSpec, cfg: AdapterConfig, model_cfg: ModelConfig):
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    if model_cfg.quant == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
        keep_4bit_layout_trainable(model)
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(spec, cfg))


def trainable_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def keep_4bit_layout_trainable(model) -> int:
    """Stop bitsandbytes from repacking NF4 weights into its CPU inference layout during training.

    Why: on CPUs with avx512_bf16, bitsandbytes (0.50) repacks a Linear4bit weight on its first eval-mode
    forward, and backward through the repacked weight then yields zero input gradients: after the first
    mid-run evaluation, every layer below the last one silently stops training (measured: LoRA-B grad
    norm 61.3 -> 0.0). The repack is a pure inference speed-up, so modules we train never use it.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
