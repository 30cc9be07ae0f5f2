"""Token-level loss, summed (not averaged) so the caller can normalize by trained tokens across the
whole batch and every gradient-accumulation step (the transformers#34191 class of bug comes from
averaging per micro-batch and then again across micro-batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phinetune.data.render import IGNORE


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over trained positions, and how many there were."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    # Only trained positions are scored, so full-vocabulary logits for prompt tokens are never
    # upcast to fp32 (Phi-4-mini's 200k vocabulary makes that the largest tensor in the step).
    logits = out.logits[:, :-1][keep].float()
    return F.cross_entropy(logits, labels[keep], reduction="sum"), int(keep.sum())
