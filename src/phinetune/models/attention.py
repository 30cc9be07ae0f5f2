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

    if kwargs.get("attention_mask") is None and kwargs["q_length"] == kwargs["kv_length"] and not kwargs.get("q_offset") \
            and not kwargs.get("kv_offset"):
        return None
    return sdpa_mask(**kwargs)


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(batch, heads, seq, dim) q/k/v -> (batch, seq, heads, dim), as transformers' attention functions return."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    q_length, kv_length = query.shape[2], key.shape[2]
    window = kwargs.get("sliding_window")
    if attention_mask is not None or position_ids is None or q_length != kv_length or q_length == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
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
        parts = [F.scaled_dot_product_attention(qs[None], ks[None], vs[None], dropout_p=dropout, scale=scaling, is_causal=True)
                 for qs, ks, vs in zip(q.split(lengths, dim=1), k.split(lengths, dim=1), v.split(lengths, dim=1))]
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
            parts.append(F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                                        attn_mask=allowed, dropout_p=dropout, scale=scaling))
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
    return NAME
