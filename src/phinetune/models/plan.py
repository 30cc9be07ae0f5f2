"""`phinetune plan`: which GPU do I need? Memory for weights, adapters, optimizer states, gradients and
activations, from config arithmetic, and the smallest common GPU that fits.

The figures model phinetune's own recipe: weights in the compute dtype (bf16 on GPUs that have it),
LoRA adapters kept in fp32 by PEFT, torch AdamW (two states per trainable parameter, in the parameter's
dtype), SDPA attention (no seq x seq matrix kept), and the loss computed on fp32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from phinetune.errors import PhinetuneError
from phinetune.models.inspect import ModelFacts, count_params, lora_params

GiB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
NF4_BYTES = 4.127 / 8  # 4-bit codes + double-quantized absmax (8 bits per 64 + fp32 per 256 blocks)
ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in fp32 even on a bf16 base (autocast_adapter_dtype)
OVERHEAD_GIB, MARGIN = 1.0, 0.10  # CUDA context + allocator fragmentation, on top of the estimate
# The tensor count below is what the layers save for backward; measured peaks (plan --validate, small
# Phi-3 on CPU: 88 KB per token-layer measured vs 47 KB counted) are ~1.8x that, from gradient buffers
# and kernel workspaces alive during backward. Scaled by this factor rather than under-promising memory.
ACTIVATION_FACTOR = 1.8
MLP_TENSORS = {"phi": 6, "phi3": 4, "phimoe": 4}  # I-sized tensors one MLP keeps for backward (see below)


@dataclass(frozen=True)
class Gpu:
    name: str
    gib: float
    bf16: bool


# Smallest first; A100 80GB before H100 80GB: same memory, the cheaper and more common card.
GPUS = (Gpu("T4 16GB", 15.0, False), Gpu("24GB consumer (RTX 3090/4090)", 23.6, True), Gpu("A100 40GB", 39.4, True),
        Gpu("A100 80GB", 79.2, True), Gpu("H100 80GB", 79.2, True), Gpu("H200 141GB", 139.8, True))


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


def activation_bytes_per_token_layer(facts: ModelFacts, dtype_bytes: int) -> float:
    """Tensors one decoder layer keeps for backward, per token (counted from the native implementations).

    Attention: the two norm inputs/outputs and residual (4 x hidden), the fused q/k/v output, the rotated
    q and k, the attention output and its reshaped copy fed to o_proj. MLP: gate_up output (2 x I), the
    activation and the gated product (I each); Phi-2's fc1 output plus gelu_new, whose tanh formula keeps
    about four more I-sized intermediates; an MoE token runs through `num_experts_per_tok` experts, plus
    its router logits.
    """
    h = facts.get("hidden_size")
    q, kv = facts.get("num_attention_heads") * facts.head_dim, facts.kv_heads * facts.head_dim
    inter = facts.get("intermediate_size") or 4 * h
    routed = facts.get("num_experts_per_tok") or 1
    attention = 4 * h + (q + 2 * kv) + (q + kv) + 2 * q
    mlp = routed * inter * MLP_TENSORS.get(facts.get("model_type"), 4) + (facts.get("num_local_experts") or 0)
    return (attention + mlp) * dtype_bytes


def estimate(facts: ModelFacts, method: str, seq: int, batch: int, checkpointing: bool = False, dtype: str = "bf16",
             r: int = 16, preset: str = "all-linear") -> Estimate:
    if method not in ("lora", "qlora", "full"):
        raise PhinetuneError(f"--method {method} is not one of lora, qlora, full")
    if seq < 1 or batch < 1:
        raise PhinetuneError("--seq and --batch must be at least 1")
    count, e = count_params(facts), DTYPE_BYTES[dtype]
    weights = {"full": count.total * e, "lora": count.total * e,
               "qlora": count.linear * NF4_BYTES + (count.total - count.linear) * e}[method]
    trainable = count.total if method == "full" else lora_params(facts, preset, r)
    state_bytes = e if method == "full" else ADAPTER_BYTES  # grads and AdamW states follow the parameter dtype
    tokens, layers = seq * batch, facts.get("num_hidden_layers")
    per_layer = ACTIVATION_FACTOR * activation_bytes_per_token_layer(facts, e) * tokens
    boundary = facts.get("hidden_size") * e * tokens  # what checkpointing keeps per layer: its input
    full_acts = layers * per_layer
    ckpt_acts = layers * boundary + per_layer  # plus one layer recomputed at a time in backward
    # logits and their gradient in the model dtype, plus the fp32 upcast, log-softmax and its gradient
    logits = tokens * facts.get("vocab_size") * (2 * e + 12)
    parts = {
        "weights": weights,
        "adapters": 0 if method == "full" else trainable * ADAPTER_BYTES,
        "gradients": trainable * state_bytes,
        "optimizer": 2 * trainable * state_bytes,
        "activations": (ckpt_acts if checkpointing else full_acts) + logits,
    }
    return Estimate(method, dtype, seq, batch, checkpointing, parts, (full_acts if checkpointing else ckpt_acts) + logits)


def smallest_gpu(facts: ModelFacts, method: str, seq: int, batch: int, checkpointing: bool, refused: dict,
                 r: int = 16, preset: str = "all-linear") -> tuple[Optional[Gpu], str]:
    """The first GPU whose memory holds the run, in the dtype that GPU would use."""
    for gpu in GPUS:
        dtype = "bf16" if gpu.bf16 else ("fp32" if "fp16" in refused else "fp16")
        if estimate(facts, method, seq, batch, checkpointing, dtype, r, preset).needed() <= gpu.gib * GiB:
            return gpu, dtype
    return None, ""
