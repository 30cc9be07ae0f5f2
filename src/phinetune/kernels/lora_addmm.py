"""The LoRA branch's scale and add folded into lora_B's matmul, accumulating into the base output in place.

PEFT's vanilla LoRA line is `result + lora_B(lora_A(dropout(x))) * scaling`: lora_B writes a tensor as wide as
the layer's output, `* scaling` reads and writes it again (and again in backward), and `+` reads it and the base
output to write a third. `result.baddbmm_(h, Bᵀ, alpha=scaling)` (`addmm_` for 2-D inputs) adds the same product
straight into the base output from inside the GEMM, so none of those full-width passes remain; its backward
passes the gradient through to the base output and scales only rank-wide tensors. Measured on the LoRA branch at
the CPU reference shapes (scripts/lora_branch_ab.py, docs/speed.md). An out-of-place `addmm` still copies the base
output into a new tensor first (`--profile` showed that copy as the largest LoRA op), and an `addmm_` on a 2-D
view of a 3-D output makes autograd clone the whole gradient in backward (measured slower than `addmm`): hence
`baddbmm_` on the 3-D output itself.

In place is safe because the base layer is a plain nn.Linear: its backward keeps its weight and input, never its
output, and PEFT's forward hands this fresh output to the variant and to nothing else (a forward hook on
`base_layer` that kept the output would see the sum). Where the output is a view (a biased Linear's 3-D output)
it adds out of place with `addmm`; where the dtypes differ (fp32 adapters on a bf16 base outside autocast) it
computes PEFT's line.

Installed through PEFT's own extension point, a LoraVariant in each layer's `lora_variant[adapter]` (DoRA uses
the same), so PEFT still runs everything else; merging and unmerging are PEFT's vanilla arithmetic
(`get_delta_weight`), and a saved adapter is a plain LoRA adapter (variants are not saved). Only plain
`lora.Linear` layers over an nn.Linear, with no variant of their own and no lora_B bias, get it.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant


class AddmmLoraVariant(LoraVariant):
    @staticmethod
    def init(module, adapter_name: str, **kwargs) -> None:
        pass

    @staticmethod
    def merge_safe(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        lora_B = module.lora_B[active_adapter]
        scaling = module.scaling[active_adapter]
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        if result.dtype != h.dtype or result.dim() not in (2, 3) or h.dim() != result.dim():
            return result + lora_B(h) * scaling  # PEFT's line
        weight_t = lora_B.weight.t().to(h.dtype)  # in-place ops are not autocast: the rank-wide cast by hand
        if result._base is not None:  # a view (a biased Linear's 3-D output): into a new tensor, out of place
            flat = torch.addmm(
                result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), weight_t, alpha=scaling
            )
            return flat.view(result.shape)
        if result.dim() == 2:
            return result.addmm_(h, weight_t, alpha=scaling)
        return result.baddbmm_(h, weight_t.expand(h.shape[0], -1, -1), alpha=scaling)


def install_lora_addmm(model: torch.nn.Module) -> int:
    """Give every plain LoRA Linear (no other variant, no lora_B bias) the addmm variant; the number of adapters given it."""
    count = 0
    for module in model.modules():
        if type(module) is not LoraLinear or not isinstance(module.get_base_layer(), torch.nn.Linear):
            continue
        for name, lora_B in module.lora_B.items():
            if name in module.lora_variant or lora_B.bias is not None:
                continue
            module.lora_variant[name] = AddmmLoraVariant()
            count += 1
    return count
