"""Token-level loss, summed (not averaged) so the caller can normalize by trained tokens across the
whole batch and every gradient-accumulation step (the transformers#34191 class of bug comes from
averaging per micro-batch and then again across micro-batches).

The fast path never builds the full-vocabulary logits: it runs the decoder for hidden states, keeps only
the trained positions, and applies the LM head chunk by chunk. In training, each chunk's gradient is
computed right away (inside the forward) and the chunk's logits are freed, so at most one chunk of
fp32 logits is alive at a time, instead of batch x length x vocab of them kept for the backward.
The LM head is called as a module, so a PEFT `modules_to_save` copy or a LoRA on `lm_head` is honoured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from phinetune.data.render import IGNORE

# Logit elements per chunk (fp32): 2**25 is 128 MiB, i.e. ~1,000 positions of Phi-3's 32k vocabulary
# or ~170 of Phi-4-mini's 200k.
CHUNK_ELEMENTS = 2**25


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over trained positions, and how many there were."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    parts = split_head(model)
    if parts is None:
        return full_logits_loss_sum(model, batch)
    decoder, head = parts
    out = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    hidden = out[0][:, :-1][keep]
    with record_function("phinetune.loss"):  # a part of `bench train --profile` (bench/step_profile.py)
        return chunked_head_loss(hidden, head, labels[keep]), int(keep.sum())


def full_logits_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The plain path: the model's own forward builds every logit; used where the fast path cannot apply."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits[:, :-1][keep].float()
    return F.cross_entropy(logits, labels[keep], reduction="sum"), int(keep.sum())


def split_head(model):
    """(decoder, lm_head) of a causal LM, or None where calling them apart would not be equivalent.

    DDP/FSDP wrappers and FSDP2-sharded models are refused: their gradient synchronisation (and FSDP2's
    weight gathering) hooks run only through the wrapper's own forward. Models that post-process logits (scaling, soft-capping) are refused too.
    """
    if not hasattr(model, "get_base_model") and type(model).__module__.startswith("torch.nn.parallel"):
        return None
    if _is_fsdp2(model):  # FSDP2 gathers the root's weights (embeddings, lm_head) only in the root's own forward
        return None
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
    config = getattr(lm, "config", None)
    if decoder is None or head is None or config is None or type(lm).__name__ not in PLAIN_HEAD_MODELS:
        return None
    if any(
        hasattr(p, "ds_id") for p in head.parameters()
    ):  # ZeRO-3: the head's weight is gathered only inside the engine's hooks
        return None
    return decoder, head


def _is_fsdp2(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# Causal LMs whose forward is exactly `lm_head(model(...).last_hidden_state)` (read in transformers v5):
# no logit scaling or soft-capping. Others fall back to the full-logits path.
PLAIN_HEAD_MODELS = {
    "Phi3ForCausalLM",
    "PhiForCausalLM",
    "PhimoeForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
}


def chunk_rows(vocab: int) -> int:
    return max(64, CHUNK_ELEMENTS // max(vocab, 1))


def chunked_head_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    vocab = _out_features(head)
    rows = chunk_rows(vocab)
    params = [p for p in head.parameters() if p.requires_grad]
    if torch.is_grad_enabled() and (hidden.requires_grad or params):
        return _ChunkedHeadCE.apply(hidden, labels, head, rows, *params)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        logits = head(hidden[start : start + rows]).float()
        total = total + F.cross_entropy(logits, labels[start : start + rows], reduction="sum")
    return total


def _out_features(head: torch.nn.Module) -> int:
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            return module.out_features
    return 32_000


def cross_entropy_and_grad(
    logits: torch.Tensor, labels: torch.Tensor, scratch: Scratch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of one chunk (in fp32) and its gradient w.r.t. the logits (in the logits' dtype).

    Written out because autograd's cross-entropy makes five passes over the chunk's batch x vocab logits
    (log_softmax, a zero-filled NLL gradient, the log_softmax backward, the cast back) where the gradient,
    softmax - one_hot, needs one fp32 buffer updated in place; `bench train --profile` showed the difference.
    With `scratch`, the fp32 buffer and the gradient live in its buffers (see Scratch), and the gradient is
    only valid until the next call.
    """
    with torch.no_grad():
        if scratch is not None:
            z = scratch.fp32(logits)
        else:
            z = logits.float()
            if z.data_ptr() == logits.data_ptr():
                z = z.clone()  # fp32 logits: do not overwrite the caller's tensor
        rows = torch.arange(z.shape[0], device=z.device)
        picked = z[rows, labels]
        peak = z.amax(dim=1, keepdim=True)
        z.sub_(peak).exp_()
        norm = z.sum(dim=1, keepdim=True)
        loss = (norm.log() + peak).squeeze(1).sub_(picked).sum()
        z.div_(norm)
        z[rows, labels] -= 1.0
        return loss, (scratch.low(z, logits.dtype) if scratch is not None else z.to(logits.dtype))


class Scratch:
    """One fp32 buffer and one gradient buffer, allocated at the first chunk and reused by every later one.

    Why: training pins glibc's mmap threshold (kernels/malloc.py), so every fresh chunk-sized tensor is a new
    mapping whose pages fault in on first touch (page faults were most of the loss share's `copy_` time in
    `bench train --profile`); a chunk of Phi-3's logits is 128 MiB in fp32. Reused, the pages fault in once
    per step rather than once per chunk, and the peak is unchanged (one chunk's buffers, as before).
    """

    def __init__(self):
        self._fp32: torch.Tensor | None = None
        self._low: torch.Tensor | None = None

    def fp32(self, logits: torch.Tensor) -> torch.Tensor:
        if self._fp32 is None or self._fp32.shape[0] < logits.shape[0]:
            self._fp32 = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        return self._fp32[: logits.shape[0]].copy_(logits)

    def low(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype == torch.float32:
            return z
        if self._low is None or self._low.shape[0] < z.shape[0] or self._low.dtype != dtype:
            self._low = torch.empty(z.shape, dtype=dtype, device=z.device)
        return self._low[: z.shape[0]].copy_(z)


class _ChunkedHeadCE(torch.autograd.Function):
    """Sum CE over chunks of the head; gradients for the head input and head parameters come from the forward.

    Written by hand because torch has no fused linear+cross-entropy that accepts an arbitrary head module
    (Liger's kernels are Triton/CUDA only and take a bare weight matrix, which a PEFT-wrapped head is not).
    """

    @staticmethod
    def forward(ctx, hidden, labels, head, rows, *params):
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # every row written below
        grad_params = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        scratch = Scratch()
        for start in range(0, hidden.shape[0], rows):
            with torch.enable_grad():
                h = hidden[start : start + rows].detach().requires_grad_(grad_hidden is not None)
                logits = head(h)
            loss, grad_logits = cross_entropy_and_grad(logits.detach(), labels[start : start + rows], scratch)
            wrt = ([h] if grad_hidden is not None else []) + list(params)
            grads = torch.autograd.grad(logits, wrt, grad_outputs=grad_logits, allow_unused=True) if wrt else []
            if grad_hidden is not None:
                grad_hidden[start : start + rows] = grads[0]
                grads = grads[1:]
            for acc, g in zip(grad_params, grads):
                if g is not None:
                    acc += g
            total += loss.detach()
        ctx.save_for_backward(*([grad_hidden] if grad_hidden is not None else []), *grad_params)
        ctx.has_hidden = grad_hidden is not None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        grad_hidden = None
        if ctx.has_hidden:
            g = saved.pop(0)
            grad_hidden = (g.float() * grad_out).to(g.dtype)
        return (grad_hidden, None, None, None, *(g * grad_out.to(g.dtype) for g in saved))
