"""The LoRA branch's scale and add folded into lora_B's matmul: `addmm(base output, A(dropout(x)), Bᵀ, alpha=scaling)`.

PEFT's vanilla LoRA line is `result + lora_B(lora_A(dropout(x))) * scaling`: lora_B writes a tensor as wide as
the layer's output, `* scaling` reads and writes it again (and again in backward), and `+` reads it and the base
output to write a third. One `addmm` computes the same sum in the GEMM's epilogue (beta=1, alpha=scaling), so
those passes go; its backward scales only rank-wide tensors by alpha. At the CPU reference shapes (8 x 512
tokens, Phi-3-mini widths, bf16 under autocast) it took the LoRA branch's forward + backward from 1.37 to 0.98 s
in an interleaved A/B on the loaded shared machine (docs/speed.md).

Installed through PEFT's own extension point, a LoraVariant in each layer's `lora_variant[adapter]` (DoRA uses
the same), so PEFT still runs everything else; merging and unmerging are PEFT's vanilla arithmetic
(`get_delta_weight`), and a saved adapter is a plain LoRA adapter (variants are not saved). Only plain
`lora.Linear` layers with no variant of their own and no lora_B bias get it; where the dtypes would make addmm
refuse (fp32 adapters on a bf16 output outside autocast) it computes PEFT's line instead.
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
        autocast = torch.is_autocast_enabled(result.device.type)
        if not autocast and not (result.dtype == h.dtype == lora_B.weight.dtype):
            return result + lora_B(h) * scaling
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.weight.t(), alpha=scaling)
        return out.view(result.shape)


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
