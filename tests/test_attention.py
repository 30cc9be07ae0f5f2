"""kernels/attention.py: per-sample SDPA on packed rows equals transformers' block-diagonal-mask attention
(eager, an independent implementation), in outputs and gradients, and never builds a seq x seq mask."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phinetune.kernels.attention import NAME, implementation, segments


def model(kv_heads: int = 2, sliding_window=None):
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        sliding_window=sliding_window,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Phi3ForCausalLM(config).float()


def packed(lengths: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input ids and position ids of rows packed from samples of these lengths (rows padded to one width as a block)."""
    width = max(sum(row) for row in lengths)
    pos = []
    for row in lengths:
        p = [i for n in row for i in range(n)]
        pos.append(p + list(range(width - len(p))))
    gen = torch.Generator().manual_seed(sum(map(sum, lengths)))
    return torch.randint(1, 96, (len(lengths), width), generator=gen), torch.tensor(pos)


def forward_backward(m, attn: str, ids, pos):
    m.set_attn_implementation(attn)
    m.zero_grad(set_to_none=True)
    logits = m(input_ids=ids, position_ids=pos, use_cache=False).logits
    (logits.float() ** 2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def assert_same_as_eager(m, ids, pos):
    ours, ours_grad = forward_backward(m, implementation("sdpa"), ids, pos)
    ref, ref_grad = forward_backward(m, "eager", ids, pos)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    for name in ref_grad:
        torch.testing.assert_close(ours_grad[name], ref_grad[name], rtol=1e-3, atol=1e-6, msg=name)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(1, 24), min_size=1, max_size=4), min_size=1, max_size=3))
def test_packed_rows_match_eager_block_diagonal_attention(lengths):
    m = model()
    ids, pos = packed(lengths)
    assert_same_as_eager(m, ids, pos)


def test_sliding_window_shorter_than_a_sample_matches_eager():
    m = model(kv_heads=4, sliding_window=5)
    ids, pos = packed([[12, 3], [9]])
    assert_same_as_eager(m, ids, pos)


def test_samples_do_not_see_each_other():
    """Control: the second sample's logits are the same packed behind another sample as alone."""
    m = model()
    m.set_attn_implementation(implementation("sdpa"))
    ids, pos = packed([[7, 5]])
    with torch.no_grad():
        row = m(input_ids=ids, position_ids=pos, use_cache=False).logits[0, 7:]
        alone = m(input_ids=ids[:, 7:], position_ids=pos[:, 7:], use_cache=False).logits[0]
        leaky = m(input_ids=ids, position_ids=torch.arange(12)[None], use_cache=False).logits[0, 7:]
    torch.testing.assert_close(row, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(row, leaky, atol=1e-3)


def test_generation_with_a_cache_matches_sdpa():
    """Decoding (q shorter than kv, a padding mask on a left-padded batch) goes to transformers' own SDPA path."""
    m = model().eval()
    ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    out = {}
    for attn in (implementation("sdpa"), "sdpa"):
        m.set_attn_implementation(attn)
        out[attn] = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out[NAME], out["sdpa"])


def test_no_square_mask_is_built():
    """For packed training rows the mask is None under ours; transformers' sdpa builds batch x 1 x seq x seq (control)."""
    from transformers.masking_utils import create_causal_mask

    m = model()
    ids, pos = packed([[40, 30, 30]])
    masks = {}
    for attn in ("sdpa", implementation("sdpa")):
        m.set_attn_implementation(attn)
        masks[attn] = create_causal_mask(
            config=m.config, inputs_embeds=m.model.embed_tokens(ids), attention_mask=None, cache=None, position_ids=pos
        )
    assert masks[NAME] is None
    assert tuple(masks["sdpa"].shape) == (1, 1, 100, 100)


def test_segments_follow_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert segments(pos, 2) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]
    assert segments(torch.arange(4)[None], 3) == [[(0, 4)]] * 3  # unsqueezed position ids broadcast over the batch


def test_other_implementations_are_left_alone():
    assert implementation("eager") == "eager" and implementation("flash_attention_2") == "flash_attention_2"
    assert implementation("sdpa") == NAME


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=3), min_size=1, max_size=3), st.sampled_from([1, 2, 4])
)
def test_fused_path_matches_eager_and_is_taken(lengths, kv_heads):
    """Phi-3's fused q/k/v attention (rotary, then the flash kernel per sample, GQA included) against eager's
    block-diagonal attention; and it is the path taken, once per sample and layer."""
    import phinetune.kernels.attention as attention

    calls, original = [], attention._attend

    def spy(q, k, v, scale):
        calls.append(q.shape[1])
        return original(q, k, v, scale)

    attention._attend = spy
    try:
        m = model(kv_heads=kv_heads)
        ids, pos = packed(lengths)
        assert_same_as_eager(m, ids, pos)
    finally:
        attention._attend = original
    expected = [e - s for row in segments(pos, len(lengths)) for s, e in row] if pos.shape[1] > 1 else []
    assert sorted(calls) == sorted(
        expected * 2
    )  # two layers; a one-token batch is the decode case, left to transformers


def test_fused_forward_equals_transformers_rotary_and_sdpa_in_bf16():
    """The fused forward is transformers' own rotary and SDPA flash kernel, bit for bit."""
    import phinetune.kernels.attention as attention

    m = model(kv_heads=4).to(torch.bfloat16)
    m.set_attn_implementation(implementation("sdpa"))
    ids, pos = packed([[9, 20, 3], [32]])
    fusable = attention._fusable_rows
    try:
        with torch.no_grad():
            fused = m(input_ids=ids, position_ids=pos).logits
            attention._fusable_rows = lambda *args: None
            unfused = m(input_ids=ids, position_ids=pos).logits
    finally:
        attention._fusable_rows = fusable
    assert torch.equal(fused, unfused)


def test_fused_path_with_partial_rotary_matches_eager():
    """Phi-4-mini rotates only part of each head (partial_rotary_factor 0.75): the rest passes through unrotated."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        partial_rotary_factor=0.75,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    m = Phi3ForCausalLM(config).float()
    ids, pos = packed([[11, 5], [16]])
    assert_same_as_eager(m, ids, pos)
