"""The training dtype when `model.dtype: auto`: bf16 on CPUs with bf16 matrix units, where it is safe and pays.

On a CPU with avx512_bf16 or AMX, bf16 GEMMs run several times faster than fp32 (measured by
`phinetune bench train`) and halve the weights' memory. bf16 is chosen only when:
  - the base is frozen and every trained tensor is a LoRA adapter: PEFT keeps adapters in fp32 and casts
    their input, so optimizer updates never round to bf16 (a bf16 `modules_to_save` copy or a bf16 full
    fine-tune would lose small updates, so those stay fp32);
  - the model is wide enough for matmuls to dominate: below MIN_HIDDEN the step is overhead-bound and
    bf16 only adds rounding (the tiny built-in models stay fp32).
Anything else keeps `choose_dtype`'s answer (fp32 on CPU, bf16/fp16 on CUDA).

With a bf16 base on CPU, the adapters compute in bf16 too (`adapter_autocast`), their weights staying fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from phinetune.config.schema import RunConfig
from phinetune.models.loading import DtypePlan, choose_dtype
from phinetune.models.specs import ModelSpec

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_HIDDEN = 1024


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_supported() -> bool:
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def model_hidden_size(path: str, spec: ModelSpec) -> int:
    config = Path(path) / "config.json"
    if config.exists():
        import json

        return int(json.loads(config.read_text()).get("hidden_size", spec.hidden_size))
    return spec.hidden_size


def choose_train_dtype(cfg: RunConfig, spec: ModelSpec, path: str) -> DtypePlan:
    plan = choose_dtype(cfg.model.dtype, spec)
    if cfg.model.dtype != "auto" or torch.cuda.is_available() or plan.dtype != torch.float32:
        return plan
    if cfg.adapter.method != "lora" or cfg.adapter.modules_to_save or cfg.model.quant != "none":
        return DtypePlan(plan.dtype, plan.name, plan.reason + " (bf16 only for LoRA with no modules_to_save)")
    if not cpu_bf16_supported():
        return DtypePlan(plan.dtype, plan.name, plan.reason + " (this CPU has no avx512_bf16/AMX)")
    if model_hidden_size(path, spec) < MIN_HIDDEN:
        return DtypePlan(plan.dtype, plan.name, plan.reason + f" (hidden size < {MIN_HIDDEN}: bf16 would not pay)")
    return DtypePlan(torch.bfloat16, "bf16", "CPU with avx512_bf16/AMX: bf16 frozen base, fp32 LoRA adapters")


def adapter_compute_dtype(cfg: RunConfig, plan: DtypePlan) -> torch.dtype | None:
    """bf16 where a frozen bf16 base trains fp32 LoRA adapters on CPU: the adapters then compute in bf16 (see
    `adapter_autocast`); None elsewhere (fp32 runs, QLoRA, full fine-tuning, CUDA: not measured there)."""
    if (
        torch.cuda.is_available()
        or plan.dtype != torch.bfloat16
        or cfg.adapter.method != "lora"
        or cfg.model.quant != "none"
    ):
        return None
    return torch.bfloat16


@contextlib.contextmanager
def adapter_autocast(model, dtype: torch.dtype | None):
    """The forward of a training step with LoRA adapters computed in `dtype` (None: unchanged).

    Why: PEFT casts each adapter's input to the adapter's fp32 dtype, so with a bf16 base every LoRA layer
    copies its input to fp32, draws dropout on the fp32 copy, runs fp32 matmuls and adds an fp32 result the
    width of the layer's output before casting it back: `bench train --profile` measured that as most of the
    "LoRA" share. Under autocast with PEFT's input cast off (its own `disable_input_dtype_casting`), dropout
    runs on the bf16 input and the adapter matmuls in bf16 with fp32 accumulation, while the weights, their
    gradients and the optimizer state stay fp32: the usual mixed precision, as TRL's `bf16=True` does it.
    Loss and logits stay fp32 (autocast keeps cross-entropy in fp32; train/loss.py upcasts the logits).
    """
    if dtype is None:
        yield
        return
    with torch.autocast("cpu", dtype=dtype), adapter_recompute(model, dtype):
        yield


@contextlib.contextmanager
def adapter_recompute(model, dtype: torch.dtype | None):
    """The backward of a step run under `adapter_autocast`: PEFT's input cast stays off, so that gradient
    checkpointing's recompute (in the backward; torch restores autocast itself) runs the adapters as the forward
    did. Without it the recompute copied every LoRA'd input to fp32 (measured at 8192 tokens, hidden 3072: peak
    RSS 0.5 GiB above plan), and torch's dropout, whose noise then changed dtype, failed checkpoint's check."""
    if dtype is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield
