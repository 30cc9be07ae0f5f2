"""RMSNorm for training on CPU: one autograd function in place of the eight ops transformers' Phi3RMSNorm runs.

Why by hand: Phi3RMSNorm upcasts its input to fp32, squares, averages, adds, takes rsqrt, multiplies, casts back
and multiplies by the weight, each a fresh tensor as large as the activations (and, in training, a fresh
mapping whose pages fault in: kernels/malloc.py), and autograd keeps the fp32 copy for the backward. Here the
forward makes one fp32 copy (scaled in place) and keeps the input in its own dtype plus one fp32 scale per
token; the backward recomputes the normalised input. `F.rms_norm` was no faster on CPU (it runs the same
decomposed ops; measured 0.95x). Measured at the reference shape (4096 tokens x 3072, bf16, forward +
backward, one thread, process CPU time, median of 5): 306 -> 145 ms (2.1x), and 2 instead of 4 bytes kept per
element in bf16 (models/plan.py's NORM_INPUT_BYTES).

Same arithmetic as Phi3RMSNorm: the normalised input is rounded to the input dtype before the weight
multiplies it. Used for frozen norm weights only (LoRA, QLoRA); a trained weight (full fine-tuning) keeps
transformers' module, which gives the weight its gradient.
"""

from __future__ import annotations

import types

import torch


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = x.float()
        if x32.data_ptr() == x.data_ptr():
            x32 = x32.clone()  # fp32 input: scaled in place below
        rstd = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).pow_(2).div_(x.shape[-1]).add_(eps).rsqrt_()
        y = x32.mul_(rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return weight * y

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        # d/dx of w * x * rstd(x): rstd * (g w - x_hat * mean(g w x_hat)), x_hat = x * rstd
        gw = grad.float().mul_(weight)
        x_hat = x.float().mul_(rstd)
        mean = torch.linalg.vecdot(gw, x_hat, dim=-1).unsqueeze(-1).div_(x.shape[-1])
        return gw.sub_(x_hat.mul_(mean)).mul_(rstd).to(x.dtype), None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)


def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # The module's own where this was not measured to pay, or must not differ: a trained weight, another device,
    # and any forward without autograd (inference, eval loss), whose arithmetic then stays transformers' to the
    # last bit, so a LoRA run's base (its adapter switched off, frozen weights) equals the base loaded alone.
    if self.weight.requires_grad or hidden_states.device.type != "cpu" or not torch.is_grad_enabled():
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def fuse_norms(model: torch.nn.Module) -> int:
    """Route every Phi-3 RMSNorm of `model` through `rms_norm` where it applies; how many were routed."""
    from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm

    count = 0
    for module in model.modules():
        if isinstance(module, Phi3RMSNorm):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
