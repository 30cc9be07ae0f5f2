"""Turn the adapter config + model spec into a PEFT model (or a fully trainable one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from phinetune.config.schema import AdapterConfig, ModelConfig, PreflightConfig
from phinetune.errors import ConfigError, PreflightError
from phinetune.kernels.lora_addmm import install_lora_addmm
from phinetune.kernels.lora_dropout import install_lora_dropout
from phinetune.models.specs import ModelSpec
from phinetune.train.targets import match_targets, target_problems

EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass
class Targets:
    modules: list[str]
    parameters: list[str]
    # Rows of the embedding / lm_head trained through PEFT trainable tokens (Phi-2's added ChatML tokens).
    token_rows: dict[str, list[int]] = field(default_factory=dict)

    @property
    def all_linear(self) -> bool:
        return self.modules == ["all-linear"]


def resolve_targets(spec: ModelSpec, cfg: AdapterConfig) -> Targets:
    """A preset name expands to the spec's real module/parameter names; a list is taken as given."""
    if isinstance(cfg.targets, str):
        preset = spec.lora_presets.get(cfg.targets)
        if preset is None:
            raise ConfigError(
                f"adapter.targets '{cfg.targets}' is not a preset of {spec.key}; choose one of {', '.join(spec.lora_presets)} or give a list of module names"
            )
        return Targets(list(preset.modules), list(preset.parameters) + list(cfg.target_parameters))
    return Targets(list(cfg.targets), list(cfg.target_parameters))


def new_token_rows(model, tokenizer, spec: ModelSpec, cfg: AdapterConfig) -> dict[str, list[int]]:
    """Embedding/lm_head rows of the tokens the spec adds (Phi-2 ChatML) that must be trained.

    Those rows are random (or mean-initialized) padding: without training them the model can neither read
    <|im_start|> nor learn to emit <|im_end|>. PEFT trainable tokens train exactly those rows (a few
    thousand parameters) instead of the whole matrices that modules_to_save would copy and train.
    """
    if tokenizer is None or not spec.added_tokens or cfg.train_new_tokens != "rows":
        return {}
    if set(EMBEDDING_MODULES) & set(cfg.modules_to_save):
        return {}  # already trained in full
    ids = sorted(set(tokenizer.convert_tokens_to_ids(list(spec.added_tokens))))
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    rows = {names[id(model.get_input_embeddings())]: ids}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        rows[names[id(output)]] = ids  # untied head (Phi-2): its rows decide whether <|im_end|> is ever emitted
    return rows


def modules_to_save(spec: ModelSpec, cfg: AdapterConfig) -> list[str]:
    extra = list(EMBEDDING_MODULES) if spec.added_tokens and cfg.train_new_tokens == "full" else []
    return list(dict.fromkeys(list(cfg.modules_to_save) + extra))


def lora_config(spec: ModelSpec, cfg: AdapterConfig, targets: Targets | None = None) -> LoraConfig:
    targets = targets or resolve_targets(spec, cfg)
    if targets.parameters and cfg.dropout:
        raise ConfigError(
            f"adapter.dropout={cfg.dropout} cannot be used with target_parameters ({', '.join(targets.parameters)}): "
            "PEFT adapts fused MoE experts without LoRA dropout; set adapter.dropout=0 or adapter.targets=attention"
        )
    modules = targets.modules[0] if targets.all_linear else targets.modules
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=modules or None,
        target_parameters=targets.parameters or None,
        modules_to_save=modules_to_save(spec, cfg) or None,
        trainable_token_indices=targets.token_rows or None,
        task_type="CAUSAL_LM",
        bias="none",
        use_dora=cfg.dora,
        use_rslora=cfg.rslora,
    )


def check_targets(model, spec: ModelSpec, targets: Targets, preflight: PreflightConfig | None) -> None:
    """Refuse dead target names before PEFT, which would silently skip them when others match."""
    if targets.all_linear or (preflight and preflight.allow_unmatched_targets):
        return
    problems = target_problems(match_targets(model, targets.modules, targets.parameters), spec)
    if problems:
        raise PreflightError("pre-flight failed:\n  " + "\n  ".join(problems))


def apply_adapter(
    model,
    spec: ModelSpec,
    cfg: AdapterConfig,
    model_cfg: ModelConfig,
    tokenizer=None,
    preflight: PreflightConfig | None = None,
):
    model = _apply_adapter(model, spec, cfg, model_cfg, tokenizer, preflight)
    if cfg.neftune_alpha is not None:
        add_neftune(model, cfg.neftune_alpha)
    return model


def add_neftune(model, alpha: float):
    """NEFTune (Jain et al. 2023): uniform noise of scale alpha/sqrt(length*hidden) on the input embeddings,
    in training mode only (eval and generation see clean embeddings). A forward hook, as transformers'
    Trainer does it; written here because that hook lives inside Trainer, which the recipe does not use."""
    import torch

    def hook(module, inputs, output):
        if not module.training:
            return output
        scale = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    return model.get_input_embeddings().register_forward_hook(hook)


def loraplus_optimizer(model, cfg):
    """LoRA+ (Hayou et al. 2024): B matrices at loraplus_ratio times the learning rate of A (PEFT's optimizer)."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    if cfg.adapter.method != "lora":
        raise ConfigError("adapter.loraplus_ratio needs adapter.method=lora")
    if cfg.train.optimizer != "adamw":
        raise ConfigError(
            f"adapter.loraplus_ratio is implemented with torch AdamW; set train.optimizer=adamw (got {cfg.train.optimizer})"
        )
    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=cfg.train.learning_rate,
        loraplus_lr_ratio=cfg.adapter.loraplus_ratio,
        weight_decay=cfg.train.weight_decay,
    )


def _apply_adapter(
    model,
    spec: ModelSpec,
    cfg: AdapterConfig,
    model_cfg: ModelConfig,
    tokenizer=None,
    preflight: PreflightConfig | None = None,
):
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    targets = resolve_targets(spec, cfg)
    check_targets(model, spec, targets, preflight)
    targets.token_rows = new_token_rows(model, tokenizer, spec, cfg)
    config = lora_config(spec, cfg, targets)
    if model_cfg.quant == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
        keep_4bit_layout_trainable(model)
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, config)
    install_lora_dropout(model)  # the same dropout, drawn cheaper on CPU (kernels/lora_dropout.py)
    install_lora_addmm(model)  # the scale and add folded into lora_B's matmul (kernels/lora_addmm.py)
    return model


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
