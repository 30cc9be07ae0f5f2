"""SDPA attention for packed rows that never builds a seq x seq mask, so memory grows linearly with length.

Why by hand: transformers (v5) turns packed `position_ids` (restarting at 0 for each sample) into a
block-diagonal boolean mask of batch x seq x seq before calling SDPA, and SDPA then runs its masked kernel
over the whole square. Measured on CPU (one layer, hidden 256, four samples per row, fwd+bwd): peak grows
12 MiB from 2k to 4k tokens but 144 MiB from 4k to 8k; at 32k tokens the mask alone is 1 GiB. Here each
sample of a row is its own causal SDPA call (`is_causal=True`, the flash kernel on CPU and CUDA), which is
exactly the block-diagonal attention, costs memory linear in the row, and skips the masked-out blocks.

Registered with transformers' AttentionInterface as `phinetune_sdpa`; `model.attn_implementation: sdpa`
loads it (models/loading.py). Anything else -- a padding mask, a KV cache (q shorter than kv), a sliding
window shorter than a sample -- goes to transformers' own SDPA path with its own mask, unchanged.

On CPU, Phi-3's attention runs fused from its q/k/v projection on (`fused_qkv_attention`): transformers slices
q, k and v out of `qkv_proj`'s output and rotates them with `cat`s, and the backward of each slice is a
zero-filled gradient as large as the whole projection (three of them, then added), and of each cat a copy;
`bench train --profile` put them at about half of the attention share. The fused function rotates q and k
into their own buffers, runs the CPU flash kernel on each packed sample, writes every output into one
(batch, seq, heads, dim) buffer that is already o_proj's input, and in the backward writes each sample's
q/k/v gradients, un-rotated, straight into one gradient of the projection's output, every element once.
It keeps what the unfused path keeps (the projection output, the rotated q and k, the output:
models/plan.py's count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "phinetune_sdpa"


def segments(position_ids: torch.Tensor, batch: int) -> list[list[tuple[int, int]]]:
    """[start, end) of each sample in each row: a new sample wherever the position does not follow the last
    (the same rule as transformers' find_packed_sequence_indices)."""
    pos = position_ids.expand(batch, -1)
    new = torch.ones_like(pos, dtype=torch.bool)
    new[:, 1:] = pos[:, 1:] - pos[:, :-1] != 1
    out = []
    for row in new:
        starts = torch.nonzero(row).flatten().tolist() + [row.shape[0]]
        out.append(list(zip(starts[:-1], starts[1:])))
    return out


def _mask(**kwargs):
    """No mask where our attention computes the causal blocks (and any sliding window) itself: no padding
    mask, no cache offset; transformers' SDPA mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if (
        kwargs.get("attention_mask") is None
        and kwargs["q_length"] == kwargs["kv_length"]
        and not kwargs.get("q_offset")
        and not kwargs.get("kv_offset")
    ):
        return None
    return sdpa_mask(**kwargs)


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(batch, heads, seq, dim) q/k/v -> (batch, seq, heads, dim), as transformers' attention functions return."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    q_length, kv_length = query.shape[2], key.shape[2]
    window = kwargs.get("sliding_window")
    if attention_mask is not None or position_ids is None or q_length != kv_length or q_length == 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rows = segments(position_ids, query.shape[0])
    if window is not None and any(e - s > window for row in rows for s, e in row):
        # a sample longer than the window: the window mask per sample (quadratic in that sample only)
        return _windowed(module, query, key, value, rows, window, dropout, scaling)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if all(len(row) == 1 for row in rows):  # nothing packed: one causal call for the whole batch
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)
        return out.transpose(1, 2).contiguous(), None
    # unbind/split, not slicing: each slice's backward writes a zero-filled gradient as large as the whole
    # tensor (measured: 6% of a reference training step in fill_ and SliceBackward), a split's backward one cat.
    outs = []
    for q, k, v, row in zip(query.unbind(0), key.unbind(0), value.unbind(0), rows):
        lengths = [e - s for s, e in row]
        parts = [
            F.scaled_dot_product_attention(
                qs[None], ks[None], vs[None], dropout_p=dropout, scale=scaling, is_causal=True
            )
            for qs, ks, vs in zip(q.split(lengths, dim=1), k.split(lengths, dim=1), v.split(lengths, dim=1))
        ]
        outs.append(torch.cat(parts, dim=2))
    return torch.cat(outs, dim=0).transpose(1, 2).contiguous(), None


def _windowed(module, query, key, value, rows, window: int, dropout: float, scaling):
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    outs = []
    for b, row in enumerate(rows):
        parts = []
        for s, e in row:
            i = torch.arange(e - s, device=query.device)
            allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)  # as transformers' sliding window
            parts.append(
                F.scaled_dot_product_attention(
                    query[b : b + 1, :, s:e],
                    key[b : b + 1, :, s:e],
                    value[b : b + 1, :, s:e],
                    attn_mask=allowed,
                    dropout_p=dropout,
                    scale=scaling,
                )
            )
        outs.append(torch.cat(parts, dim=2))
    return torch.cat(outs, dim=0).transpose(1, 2).contiguous(), None


def implementation(name: str) -> str:
    """The attention implementation to load for a config value: `sdpa` becomes the packed-row SDPA."""
    if name != "sdpa":
        return name
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, _mask)
    _install_fused_phi3()
    return NAME


def _install_fused_phi3() -> None:
    """Route Phi-3 attention through `fused_qkv_attention` where it applies. A class-level wrapper, not a new
    attention function, because transformers calls the attention interface only after slicing and rotating
    q/k/v; the wrapper hands every other case (another implementation, a cache, a mask, CUDA) to the original."""
    from transformers.models.phi3 import modeling_phi3

    cls = modeling_phi3.Phi3Attention
    if getattr(cls.forward, "_phinetune_fused", False):
        return
    original = cls.forward

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        rows = _fusable_rows(self, hidden_states, attention_mask, cache, kwargs)
        if rows is None:
            return original(self, hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs)
        cos, sin = position_embeddings
        out = fused_qkv_attention(
            self.qkv_proj(hidden_states),
            cos,
            sin,
            rows,
            self.config.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.scaling,
        )
        return self.o_proj(out), None

    forward._phinetune_fused = True
    cls.forward = forward


def _fusable_rows(module, hidden_states, attention_mask, cache, kwargs) -> list[list[tuple[int, int]]] | None:
    """The rows' samples where the fused path computes exactly what the original would, else None."""
    position_ids = kwargs.get("position_ids")
    if (
        module.config._attn_implementation != NAME
        or attention_mask is not None
        or cache is not None
        or kwargs.get("past_key_values") is not None
        or position_ids is None
        or hidden_states.device.type != "cpu"
        or (module.training and module.attention_dropout > 0)
        or hidden_states.shape[1] == 1
    ):
        return None
    rows = segments(position_ids, hidden_states.shape[0])
    window = getattr(module.config, "sliding_window", None)
    if window is not None and any(e - s > window for row in rows for s, e in row):
        return None
    return rows


def fused_qkv_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: list[list[tuple[int, int]]],
    heads: int,
    kv_heads: int,
    head_dim: int,
    scale: float,
) -> torch.Tensor:
    """Phi-3's attention from its fused (batch, seq, (heads + 2 kv_heads) x dim) projection: rotary on q and k,
    causal attention within each [start, end) sample of each row; (batch, seq, heads x dim), o_proj's input."""
    return _FusedQKVAttention.apply(qkv, cos, sin, rows, heads, kv_heads, head_dim, scale)


def _split(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    """(batch, seq, n, dim) views of q, k and v in the projection's output."""
    b, l, _ = qkv.shape
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return q.view(b, l, heads, head_dim), k.view(b, l, kv_heads, head_dim), v.view(b, l, kv_heads, head_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin on the first cos.shape[-1] dims (the rest pass), rounded op by op as
    transformers' apply_rotary_pos_emb is, so the fused forward equals the unfused one bit for bit."""
    rot, half = cos.shape[-1], cos.shape[-1] // 2
    out = _heads_major(x)
    x1, x2 = x[..., :half], x[..., half:rot]
    torch.mul(x1, cos[..., :half], out=out[..., :half]).sub_(x2 * sin[..., :half])
    torch.mul(x2, cos[..., half:], out=out[..., half:rot]).add_(x1 * sin[..., half:])
    out[..., rot:] = x[..., rot:]
    return out


def _unrotate_into(out: torch.Tensor, g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """The gradient of `_rotate` w.r.t. its input, for output gradient g, written into `out`."""
    rot, half = cos.shape[-1], cos.shape[-1] // 2
    g1, g2 = g[..., :half], g[..., half:rot]
    torch.mul(g1, cos[..., :half], out=out[..., :half]).add_(g2 * sin[..., half:])
    torch.mul(g2, cos[..., half:], out=out[..., half:rot]).sub_(g1 * sin[..., :half])
    out[..., rot:] = g[..., rot:]


def _heads_major(like: torch.Tensor) -> torch.Tensor:
    """An empty (batch, seq, heads, dim) tensor stored as (batch, heads, seq, dim): the flash kernel runs
    faster on q and k whose rows are contiguous per head (measured ~1.4x on its backward, on 1 thread)."""
    b, l, h, d = like.shape
    return like.new_empty(b, h, l, d).transpose(1, 2)


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """A (seq, n, dim) slice as the (n, seq, dim) view the kernels take (they read any strides)."""
    return x.transpose(0, 1)


def _attend(q, k, v, scale: float):
    """One sample: q (heads, n, dim), k and v (kv_heads, n, dim; the kernel takes GQA) -> output, logsumexp.

    The flash kernel, not the math path (two batched matmuls around a softmax), though the math path measured
    faster alone (fwd+bwd, bf16, 32 heads of 96, one thread: 82 vs 104 ms at 512 tokens, 6.2 vs 14.5 at 128):
    under training's allocator setting of the time (kernels/malloc.py's 128 KiB mmap threshold: every large tensor
    a fresh mapping) its per-sample squares of scores page-fault in on every sample, and the fused attention with
    it measured 0.81x the unfused one, against 1.34x with the flash kernel (reference shape, interleaved A/B, one
    thread). Not re-measured since the threshold became one hidden state of the micro-batch (48 MiB there)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q[None], k[None], v[None], 0.0, True, scale=scale
    )
    return out[0], lse[0]


def _attend_backward(grad, q, k, v, out, lse, scale: float):
    """One sample's (dq, dk, dv) for output gradient `grad`, shapes as `_attend`'s inputs."""
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad[None], q[None], k[None], v[None], out[None], lse[None].contiguous(), 0.0, True, scale=scale
    )
    return dq[0], dk[0], dv[0]


class _FusedQKVAttention(torch.autograd.Function):
    """See the module docstring; per sample, the CPU flash kernel's own forward and backward ops (the public
    SDPA would keep an autograd node and an output per sample, and need the same slicing)."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, rows, heads, kv_heads, head_dim, scale):
        b, l, _ = qkv.shape
        q, k, v = _split(qkv, heads, kv_heads, head_dim)
        cos, sin = cos.to(qkv.dtype).expand(b, -1, -1)[:, :, None], sin.to(qkv.dtype).expand(b, -1, -1)[:, :, None]
        qr, kr = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = qkv.new_empty(b, l, heads, head_dim)
        lse = torch.empty(b, l, heads, dtype=torch.float32, device=qkv.device)
        with torch.autocast(qkv.device.type, enabled=False):
            for i, row in enumerate(rows):
                for s, e in row:
                    o, m = _attend(_heads_first(qr[i, s:e]), _heads_first(kr[i, s:e]), _heads_first(v[i, s:e]), scale)
                    out[i, s:e], lse[i, s:e] = o.transpose(0, 1), m.transpose(0, 1)
        ctx.save_for_backward(qkv, qr, kr, out, lse, cos, sin)
        ctx.rows, ctx.shape = rows, (heads, kv_heads, head_dim, scale)
        return out.view(b, l, heads * head_dim)

    @staticmethod
    def backward(ctx, grad):
        qkv, qr, kr, out, lse, cos, sin = ctx.saved_tensors
        heads, kv_heads, head_dim, scale = ctx.shape
        b, l, _ = qkv.shape
        grad = grad.reshape(b, l, heads, head_dim)
        _, _, v = _split(qkv, heads, kv_heads, head_dim)
        grad_qkv = torch.empty_like(qkv)  # every element is written below: each sample's q, k and v
        dq, dk, dv = _split(grad_qkv, heads, kv_heads, head_dim)
        dqr, dkr = _heads_major(qr), _heads_major(kr)  # the rotated q and k's, un-rotated at once below
        with torch.autocast(qkv.device.type, enabled=False):
            for i, row in enumerate(ctx.rows):
                for s, e in row:
                    gq, gk, gv = _attend_backward(
                        _heads_first(grad[i, s:e]),
                        _heads_first(qr[i, s:e]),
                        _heads_first(kr[i, s:e]),
                        _heads_first(v[i, s:e]),
                        _heads_first(out[i, s:e]),
                        lse[i, s:e].transpose(0, 1),
                        scale,
                    )
                    dqr[i, s:e], dkr[i, s:e], dv[i, s:e] = gq.transpose(0, 1), gk.transpose(0, 1), gv.transpose(0, 1)
        # whole tensors rather than per sample: each elementwise op is a parallel region, and on a busy
        # machine every region waits for both threads (measured: a 0.5M-element op took 20 ms on 2 threads)
        _unrotate_into(dq, dqr, cos, sin)
        _unrotate_into(dk, dkr, cos, sin)
        return grad_qkv, None, None, None, None, None, None, None
