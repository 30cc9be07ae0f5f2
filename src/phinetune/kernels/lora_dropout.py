"""LoRA dropout that draws only the dropped positions (`install_lora_dropout`, called after PEFT wraps a model).

The contract is torch's dropout: in training mode each element is zeroed independently with probability p and
the others scaled by 1/(1-p); in eval mode, the identity. What differs is how the randomness is drawn.

Why: on CPUs other than Intel's, torch's `bernoulli_` draws one double per element serially (its MKL path runs on
Intel only), then dropout divides the noise by 1-p and multiplies: three passes over a tensor as wide as every
LoRA'd input, plus a noise tensor kept for backward. `bench train --profile` measured that as 7.6% of the CPU
reference step. Here the dropped positions are drawn directly: in a sequence of independent Bernoulli(p) trials
the gaps between successive dropped elements are independent Geometric(p) variables on {1, 2, ...}, so p·n
geometric draws (torch's `geometric_`, a double and a log each) give exactly the same distribution as n
Bernoulli draws. One multiply by 1/(1-p) and an `index_fill_` of the ~p·n positions make the output; backward
does the same to the gradient. Kept for backward: the positions (int64, 8·p bytes per element: 0.4 at p=0.05,
against 2 for torch's bf16 noise; models/plan.py counts it).

The draws come from torch's default generator, serially, so `torch.manual_seed`, a checkpoint's saved RNG state
(exact resume) and gradient checkpointing's recompute (which restores the RNG state) see the same masks, whatever
the thread count. It consumes the generator differently from torch's dropout: the same seed gives other masks
than before, with the same distribution.

Where it is not used: CUDA tensors (torch's fused dropout is one kernel there), and p above MAX_P, where p·n
geometric draws stop being cheaper than n Bernoulli ones (measured even at p=0.5): both go to F.dropout.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

MAX_P = 0.5


def drop_positions(numel: int, p: float) -> torch.Tensor:
    """Sorted flat indices (int64) of the dropped elements among `numel`, each dropped independently with probability p."""
    if numel == 0:
        return torch.empty(0, dtype=torch.int64)
    mean = numel * p
    # One draw covers numel with probability ~1 - 1e-9 (6 standard deviations above the mean count); the loop the rest.
    # float64: a uniform of exactly 0 makes an infinite gap, which stays inf (beyond numel) instead of overflowing int64.
    chunk = int(mean + 6 * math.sqrt(mean) + 16)
    ends = torch.empty(chunk, dtype=torch.float64).geometric_(p).cumsum_(0)  # 1-based positions of the drops
    while ends[-1] < numel:
        more = torch.empty(chunk, dtype=torch.float64).geometric_(p).cumsum_(0).add_(ends[-1])
        ends = torch.cat([ends, more])
    count = int(torch.searchsorted(ends, float(numel), right=True))
    return ends[:count].to(torch.int64).sub_(1)


def _scaled_and_dropped(t: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    """t times scale, in t's dtype (the scale held at full precision), with the given flat positions zeroed."""
    out = t.mul(scale).contiguous()  # positions index the row-major order; a strided result would not be
    out.view(-1).index_fill_(0, positions, 0)
    return out


class _PositionDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        positions = drop_positions(x.numel(), p)
        ctx.save_for_backward(positions)
        ctx.scale = 1.0 / (1.0 - p)
        return _scaled_and_dropped(x, positions, ctx.scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (positions,) = ctx.saved_tensors
        return _scaled_and_dropped(grad, positions, ctx.scale), None


class PositionDropout(torch.nn.Dropout):
    """torch.nn.Dropout with the dropped positions drawn directly (module docstring). A Dropout subclass, so code
    that inspects `p` or `isinstance(m, nn.Dropout)` (PEFT's DoRA) sees what it expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.is_cuda or self.p > MAX_P or self.inplace:
            return super().forward(x)
        return _PositionDropout.apply(x, self.p)


def install_lora_dropout(model: torch.nn.Module) -> int:
    """Replace every LoRA layer's `lora_dropout[adapter]` torch Dropout by a PositionDropout of the same p; the
    number replaced. PEFT builds nn.Dropout for p > 0 and nn.Identity for p = 0 (left as it is)."""
    count = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                replacement = PositionDropout(drop.p)
                replacement.train(drop.training)
                drops[name] = replacement
                count += 1
    return count
