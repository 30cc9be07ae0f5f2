"""`phinetune plan`: which GPU do I need? Memory for weights, adapters, optimizer states, gradients and
activations, from config arithmetic, and the smallest common GPU that fits.

The figures model phinetune's own recipe: weights in the compute dtype (bf16 on GPUs that have it),
LoRA adapters kept in fp32 by PEFT, torch AdamW (two states per trainable parameter, in the parameter's
dtype), SDPA attention (no seq x seq matrix kept, kernels/attention.py), and the chunked loss (train/loss.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from phinetune.errors import PhinetuneError
from phinetune.models.inspect import SHAPES, ModelFacts, count_params, lora_params

if TYPE_CHECKING:  # a type only: `phinetune plan` starts without the config schema
    from phinetune.config.schema import RunConfig

GiB = 1024**3
METHODS = ("lora", "qlora", "full")  # --method
DEVICES = ("cpu", "cuda")  # what --validate measures on (bench/plan.py)
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
NF4_BYTES = 4.127 / 8  # 4-bit codes + double-quantized absmax (8 bits per 64 + fp32 per 256 blocks)
ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in fp32 even on a bf16 base (autocast_adapter_dtype)
OVERHEAD_GIB, MARGIN = 1.0, 0.10  # CUDA context + allocator fragmentation, on top of the estimate
# What one decoder layer keeps for backward, per token, in bytes: counted tensor by tensor and checked with
# torch.autograd.graph.saved_tensors_hooks (fp32 and bf16 bases, LoRA dropout on and off, hidden 512) and
# against peak RSS (bench train --sweep, docs/speed.md). A frozen Linear keeps no input (it needs none for
# its input gradient); a LoRA'd one keeps, for lora_A, its input in the adapters' compute dtype and, with
# dropout, what the dropout keeps for its backward; a norm keeps its input upcast to fp32, whatever the dtype, but
# for a frozen Phi-3 RMSNorm on CPU (kernels/norm.py), which keeps its input in the model dtype (norm_input_bytes).
NORM_INPUT_BYTES = 4
FUSED_NORM_MODELS = ("phi3",)  # model types whose RMSNorm kernels/norm.py replaces
# LoRA dropout on CPU (kernels/lora_dropout.py) keeps the int64 flat positions of the dropped elements: 8 bytes per
# dropped element, 8 * p per element; above DROP_POSITIONS_MAX_P (keep in step with kernels/lora_dropout.py's MAX_P;
# tests/test_plan.py checks they agree) and on CUDA it is torch's dropout, counted as a noise tensor in the
# adapters' compute dtype.
DROP_POSITION_BYTES = 8
DROP_POSITIONS_MAX_P = 0.5


def norm_input_bytes(facts: ModelFacts, dtype_bytes: int, method: str, device: str) -> int:
    """Bytes per element a norm keeps for the backward: kernels/norm.py's where it runs (CPU, frozen weight)."""
    if device == "cpu" and method != "full" and facts.get("model_type") in FUSED_NORM_MODELS:
        return dtype_bytes
    return NORM_INPUT_BYTES


# Per element of a LoRA'd input, by the adapters' compute dtype: the input lora_A keeps, plus what the dropout of
# probability p keeps. fp32 wherever PEFT casts the input to its fp32 adapters; bf16 under a bf16 base on CPU,
# where training runs the adapters under autocast (train/precision.py adapter_autocast).
def adapted_input_bytes(adapter_bytes: int, dropout: float, device: str = "cuda") -> float:
    if not dropout:
        return adapter_bytes
    if device == "cpu" and dropout <= DROP_POSITIONS_MAX_P:
        return adapter_bytes + DROP_POSITION_BYTES * dropout
    return 2 * adapter_bytes


MLP_TENSORS = {"phi": 6, "phi3": 4, "phimoe": 4}  # I-sized tensors one MLP computes (the last is down_proj's input)
# The loss (train/loss.py) never holds full-vocabulary logits: one chunk of CHUNK_ELEMENTS logits at a time
# (keep in step with train/loss.py's CHUNK_ELEMENTS; tests/test_plan.py checks they agree).
LOSS_CHUNK_ELEMENTS = 2**25
LOGIT_BYTES = 8  # the head's logits and one fp32 buffer (softmax, then its gradient in place: cross_entropy_and_grad)
# On CPU, what a training process holds beyond the tensors counted here once it has run a step: torch's kernel
# and thread-pool state, the model-loading and autograd machinery. Measured by bench train --sweep as the constant
# left between peak RSS and the counted parts at tiny width (34 MiB at every point, 256 to 2048 tokens, 1-2
# layers). On a GPU, OVERHEAD_GIB (the CUDA context) is added by Estimate.needed() instead.
CPU_RUNTIME_BYTES = 34 * 2**20
# The backward's own working set, on top of what the forward kept: the gradient buffers of one MLP (gate_up,
# the activation, down_proj's input, the LoRA branch), per token and intermediate element, keyed by the
# adapters' compute bytes. fp32 adapters: 12, measured at the reference width with a bf16 base before training
# ran the adapters in bf16 (bench train --sweep: 97 KiB per token over 2048 -> 8192 tokens, where it outgrew
# the loss chunk). bf16 adapters (adapter_autocast): at most 4, the bound the 8192-token point leaves (the
# forward's end was still the peak there).
BACKWARD_MLP_BYTES = {4: 12, 2: 4}


@dataclass(frozen=True)
class Gpu:
    name: str
    gib: float
    bf16: bool


# Smallest first; A100 80GB before H100 80GB: same memory, the cheaper and more common card.
GPUS = (
    Gpu("T4 16GB", 15.0, False),
    Gpu("24GB consumer (RTX 3090/4090)", 23.6, True),
    Gpu("A100 40GB", 39.4, True),
    Gpu("A100 80GB", 79.2, True),
    Gpu("H100 80GB", 79.2, True),
    Gpu("H200 141GB", 139.8, True),
)


@dataclass
class Estimate:
    method: str
    dtype: str
    seq: int
    batch: int
    checkpointing: bool
    parts: dict[str, float] = field(default_factory=dict)  # bytes
    activations_other: float = 0.0  # activations with the other checkpointing setting, for comparison

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def needed(self) -> float:
        """Bytes of GPU memory to ask for: the estimate plus margin and fixed CUDA overhead."""
        return self.total * (1 + MARGIN) + OVERHEAD_GIB * GiB


def linear_inputs(facts: ModelFacts, names=None) -> int:
    """Input elements per token of one layer's Linear layers (all, or those named); an MoE token reaches its
    routed experts only."""
    h, inter = facts.get("hidden_size"), facts.get("intermediate_size") or 4 * facts.get("hidden_size")
    q, kv = facts.get("num_attention_heads") * facts.head_dim, facts.kv_heads * facts.head_dim
    routed = facts.get("num_experts_per_tok") or 1
    shapes = SHAPES.get(facts.get("model_type"), SHAPES["phi3"])(h, q, kv, inter, 1)
    return sum(
        i * (routed if "experts" in name else 1) for name, (i, o, n) in shapes.items() if names is None or name in names
    )


def adapted_names(facts: ModelFacts, preset: str) -> list[str]:
    chosen = facts.spec.lora_presets.get(preset)
    if chosen and chosen.modules != ("all-linear",):
        return list(chosen.modules) + list(chosen.parameters)
    h = facts.get("hidden_size")
    return list(SHAPES.get(facts.get("model_type"), SHAPES["phi3"])(h, h, h, h, 1))


def activation_bytes_per_token_layer(
    facts: ModelFacts,
    dtype_bytes: int,
    method: str = "lora",
    preset: str = "all-linear",
    lora_dropout: float = 0.05,
    adapter_bytes: int = ADAPTER_BYTES,
    device: str = "cuda",
    norm_bytes: int = NORM_INPUT_BYTES,
) -> float:
    """Bytes one decoder layer keeps for backward, per token (see NORM_INPUT_BYTES above for the rules).

    Always kept, in the model dtype: the fused q/k/v output, the rotated q and k, the attention output; MLP:
    gate_up output (2 x I) and the activation (I); Phi-2's fc1 output plus gelu_new's tanh intermediates; an
    MoE token runs through `num_experts_per_tok` experts, plus its router logits. Linear inputs: LoRA'd ones
    in the adapters' compute dtype (adapted_input_bytes); a trained weight (full fine-tuning) keeps its input in the model dtype,
    and so does bitsandbytes' 4-bit matmul (QLoRA) for every Linear; full fine-tuning also keeps the norm
    outputs (for the norm weights' gradient).
    """
    h = facts.get("hidden_size")
    q, kv = facts.get("num_attention_heads") * facts.head_dim, facts.kv_heads * facts.head_dim
    inter = facts.get("intermediate_size") or 4 * h
    routed = facts.get("num_experts_per_tok") or 1
    always = (q + 2 * kv) + (q + kv) + q + routed * inter * (MLP_TENSORS.get(facts.get("model_type"), 4) - 1)
    always += facts.get("num_local_experts") or 0
    out = 2 * h * norm_bytes + always * dtype_bytes
    if method == "full":
        return out + (linear_inputs(facts) + 2 * h) * dtype_bytes
    out += linear_inputs(facts, adapted_names(facts, preset)) * adapted_input_bytes(adapter_bytes, lora_dropout, device)
    if method == "qlora":
        out += linear_inputs(facts) * dtype_bytes
    return out


def loss_bytes(
    facts: ModelFacts, tokens: int, dtype_bytes: int, norm_bytes: int = NORM_INPUT_BYTES
) -> tuple[float, float]:
    """The loss path's memory (train/loss.py): one chunk of logits, alive during the forward only; and, kept into
    the backward, the final norm's input (norm_input_bytes), the gathered hidden states and their gradient."""
    vocab = facts.get("vocab_size")
    rows = min(tokens, max(64, LOSS_CHUNK_ELEMENTS // vocab))
    return rows * vocab * LOGIT_BYTES, tokens * facts.get("hidden_size") * (norm_bytes + 2 * dtype_bytes)


def estimate(
    facts: ModelFacts,
    method: str,
    seq: int,
    batch: int,
    checkpointing: bool = False,
    dtype: str = "bf16",
    r: int = 16,
    preset: str = "all-linear",
    lora_dropout: float = 0.05,
    device: str = "cuda",
) -> Estimate:
    """The run's memory; `lora_dropout` is the LoRA dropout probability (0: none)."""
    if method not in ("lora", "qlora", "full"):
        raise PhinetuneError(f"--method {method} is not one of {', '.join(METHODS)}")
    if seq < 1 or batch < 1:
        raise PhinetuneError("--seq and --batch must be at least 1")
    count, e = count_params(facts), DTYPE_BYTES[dtype]
    weights = {
        "full": count.total * e,
        "lora": count.total * e,
        "qlora": count.linear * NF4_BYTES + (count.total - count.linear) * e,
    }[method]
    trainable = count.total if method == "full" else lora_params(facts, preset, r)
    state_bytes = e if method == "full" else ADAPTER_BYTES  # grads and AdamW states follow the parameter dtype
    tokens, layers = seq * batch, facts.get("num_hidden_layers")
    adapter_compute = (
        e if (device == "cpu" and dtype == "bf16" and method == "lora") else ADAPTER_BYTES
    )  # adapter_autocast
    norm = norm_input_bytes(facts, e, method, device)
    per_layer = (
        activation_bytes_per_token_layer(facts, e, method, preset, lora_dropout, adapter_compute, device, norm) * tokens
    )
    boundary = facts.get("hidden_size") * e * tokens  # what checkpointing keeps per layer: its input
    chunk, kept = loss_bytes(facts, tokens, e, norm)
    backward = (
        tokens
        * (facts.get("intermediate_size") or 4 * facts.get("hidden_size"))
        * (facts.get("num_experts_per_tok") or 1)
        * BACKWARD_MLP_BYTES.get(adapter_compute, 12)
    )
    # The peak is the larger of the forward's end (a logits chunk alive) and the start of the backward (its
    # gradient buffers); without checkpointing every layer's activations are alive at both, with it only the
    # layer inputs, plus one layer recomputed at a time in the backward.
    full_acts = layers * per_layer + kept + max(chunk, backward)
    ckpt_acts = layers * boundary + kept + max(chunk, per_layer + backward)
    parts = {
        "weights": weights,
        "adapters": 0 if method == "full" else trainable * ADAPTER_BYTES,
        "gradients": trainable * state_bytes,
        "optimizer": 2 * trainable * state_bytes,
        "activations": ckpt_acts if checkpointing else full_acts,
    }
    if device == "cpu":
        parts["runtime"] = CPU_RUNTIME_BYTES
    return Estimate(method, dtype, seq, batch, checkpointing, parts, full_acts if checkpointing else ckpt_acts)


def smallest_gpu(
    facts: ModelFacts,
    method: str,
    seq: int,
    batch: int,
    checkpointing: bool,
    refused: dict,
    r: int = 16,
    preset: str = "all-linear",
    lora_dropout: float = 0.05,
) -> tuple[Gpu | None, str]:
    """The first GPU whose memory holds the run, in the dtype that GPU would use."""
    for gpu in GPUS:
        dtype = "bf16" if gpu.bf16 else ("fp32" if "fp16" in refused else "fp16")
        if estimate(facts, method, seq, batch, checkpointing, dtype, r, preset, lora_dropout).needed() <= gpu.gib * GiB:
            return gpu, dtype
    return None, ""


# ---------------------------------------------------------------- what is planned: flags, a run config, or defaults


@dataclass(frozen=True)
class Settings:
    method: str = "lora"
    seq: int = 2048
    batch: int = 1
    checkpointing: bool | str = False  # True, False, or "auto" (a run config's default: on when the run would not fit)
    r: int = 16
    targets: str = "all-linear"  # a preset
    dropout: float = 0.05
    dtype: str | None = None  # None: bf16 where the model has it, else fp32


# Each setting as the user sets it: the flag, and the run-config key it comes from.
FLAGS = {
    "method": ("--method", "adapter.method / model.quant"),
    "seq": ("--seq", "data.max_length"),
    "batch": ("--batch", "train.batch_size"),
    "checkpointing": ("--grad-checkpointing", "model.gradient_checkpointing"),
    "r": ("--r", "adapter.r"),
    "targets": ("--targets", "adapter.targets"),
    "dropout": ("(no flag)", "adapter.dropout"),
}


def method_of(cfg: RunConfig) -> str:
    return "full" if cfg.adapter.method == "full" else ("qlora" if cfg.model.quant == "nf4" else "lora")


def config_settings(cfg: RunConfig) -> Settings:
    """What a run config trains: the micro-batch (train.batch_size rows of data.max_length tokens, which packing fills),
    method, LoRA rank, targets and dropout, and its gradient checkpointing setting. A list of target modules is
    planned as all-linear (an upper bound), as train/recompute.py does."""
    targets = cfg.adapter.targets if isinstance(cfg.adapter.targets, str) else "all-linear"
    dtype = cfg.model.dtype if cfg.model.dtype in DTYPE_BYTES else None
    return Settings(
        method_of(cfg),
        cfg.data.max_length,
        cfg.train.batch_size,
        cfg.model.gradient_checkpointing,
        cfg.adapter.r,
        targets,
        cfg.adapter.dropout,
        dtype,
    )


def _shown(name: str, value) -> str:
    if name == "checkpointing":
        return f"gradient checkpointing {'auto' if value == 'auto' else 'on' if value else 'off'}"
    if name == "dropout":
        return f"LoRA dropout {value:g}"
    return f"{name} {value}"


def describe_settings(settings: Settings, given: set[str], config: str | None) -> str:
    """One line saying where every planned setting came from: the flags given, the run config, or plan's defaults."""
    rest = [n for n in FLAGS if n not in given and not (settings.method == "full" and n in ("r", "targets", "dropout"))]
    flags = ", ".join(_shown(n, getattr(settings, n)) for n in FLAGS if n in given)
    if config:
        text = f"settings from {config}: " + ", ".join(
            f"{_shown(n, getattr(settings, n))} ({FLAGS[n][1]})" for n in rest
        )
        return text + (f"; from the flags: {flags}" if flags else "")
    if not rest:
        return f"settings from the flags: {flags}"
    settable = [FLAGS[n][0] for n in rest if FLAGS[n][0] != "(no flag)"]
    how = f"set with {', '.join(settable)}, or plan" if settable else "plan"
    return (
        f"assumed (not given; {how} a run config to use its settings): "
        + ", ".join(_shown(n, getattr(settings, n)) for n in rest)
        + (f"; from the flags: {flags}" if flags else "")
    )


# ---------------------------------------------------------------- `phinetune plan`: what is planned, printed


def planned_settings(target: str, flags: dict) -> tuple[str, Settings, set[str], str | None]:
    """(model, settings, the settings given as flags, the run config) for `plan TARGET`: a run config (.yaml) plans
    its model and settings, anything else is a model with plan's defaults; a flag that is not None wins either way."""
    from phinetune.config import load_config

    if not target:
        raise PhinetuneError(
            "plan needs a MODEL (a spec key such as phi3.5-mini, a Hub id or a config.json), a run folder, "
            "a run config (.yaml), or --validate"
        )
    config = target if target.endswith((".yaml", ".yml")) else None
    model, base = target, Settings()
    if config:
        cfg = load_config(config)
        model, base = cfg.model.name, config_settings(cfg)
    given = {k: v for k, v in flags.items() if v is not None}
    return model, replace(base, **given), set(given), config


def print_plan(target: str, flags: dict, facts_of: Callable[[str], ModelFacts]) -> Gpu | None:
    """`phinetune plan`: the memory breakdown of `target` (planned_settings) and the smallest common GPU it fits on,
    printed; None when none does. `facts_of` reads a model's facts (the CLI's also takes a run folder: its base)."""
    from phinetune.progress import console

    model, s, given, config = planned_settings(target, flags)
    facts = facts_of(model)
    dtype = s.dtype or ("fp32" if "bf16" not in facts.spec.dtypes else "bf16")
    auto = s.checkpointing == "auto"  # as training decides: on when the run without it does not fit
    est = estimate(
        facts, s.method, s.seq, s.batch, bool(s.checkpointing) and not auto, dtype, s.r, s.targets, s.dropout
    )
    shown = "auto (estimated without it)" if auto else "on" if s.checkpointing else "off"
    console.print(
        f"{facts.spec.key}: {s.method}, seq {s.seq} x batch {s.batch}, {dtype}, gradient checkpointing {shown}"
    )
    console.print(describe_settings(s, given, config))
    for part, size in est.parts.items():
        console.print(f"  {part:<12} {size / GiB:8.2f} GiB")
    console.print(
        f"  {'total':<12} {est.total / GiB:8.2f} GiB   (activations with checkpointing "
        f"{'off' if est.checkpointing else 'on'}: {est.activations_other / GiB:.2f} GiB)"
    )
    console.print(
        f"  needed       {est.needed() / GiB:8.2f} GiB   (+{MARGIN:.0%} fragmentation, +{OVERHEAD_GIB:g} GiB CUDA context)"
    )
    args, rest = (facts, s.method, s.seq, s.batch), (facts.spec.refused_dtypes, s.r, s.targets, s.dropout)
    gpu, gpu_dtype = smallest_gpu(*args, bool(s.checkpointing), *rest)
    if gpu is None:
        console.print(
            "smallest GPU: none of the common single GPUs fits; try --method qlora, --grad-checkpointing, a shorter --seq, "
            "or several GPUs"
        )
        return None
    note = ""
    if auto:  # the smallest GPU that holds the run with checkpointing; auto keeps it off there if it fits without
        note = f" (auto: checkpointing {'off' if smallest_gpu(*args, False, *rest)[0] == gpu else 'on'} there)"
    console.print(
        f"smallest GPU: {gpu.name}"
        + (f" (runs in {gpu_dtype}: no bf16 on this card)" if gpu_dtype != dtype else "")
        + note
    )
    return gpu
