"""Packing: samples packed in one row see nothing of each other, on CPU sdpa and eager attention."""

from __future__ import annotations

import pytest
import torch

from phinetune.data.packing import batches, collate, make_rows, pack
from phinetune.data.render import IGNORE, Rendered


def sample(ids: list[int], trained_from: int) -> Rendered:
    return Rendered(ids, [IGNORE] * trained_from + ids[trained_from:], "")


@pytest.fixture(scope="module")
def fp32_phi3(tiny_phi3):
    model, tokenizer = tiny_phi3
    attn, training = model.config._attn_implementation, model.training
    yield model.float().eval(), tokenizer
    model.set_attn_implementation(attn)  # the model is shared by the session: leave it as found
    model.train(training)


def _samples(tokenizer) -> list[Rendered]:
    texts = [
        "What has keys but can't open a lock? A piano.",
        "What gets wetter the more it dries? A towel.",
        "Hi.",
        "What runs but never walks, has a mouth but never talks? A river, of course.",
    ]
    return [sample(tokenizer(t, add_special_tokens=False)["input_ids"], 2) for t in texts]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_sample_has_the_same_logits_packed_as_alone(fp32_phi3, attn):
    model, tokenizer = fp32_phi3
    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    samples = _samples(tokenizer)
    rows = pack(samples, max_length=200)
    assert len(rows) == 1, "all four samples must share one row for the test to mean anything"
    # Pad the batch to a wider width too: padding is its own block and must not change anything either.
    batch = collate(rows + [make_rows(samples[2:3], 200, False)[0]], tokenizer.pad_token_id)
    with torch.no_grad():
        # use_cache=False as in training (train/loss.py): with a KV cache transformers does not look for
        # packed sequences in position_ids, and the samples would attend to each other.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        order = sorted(samples, key=lambda s: -len(s.input_ids))  # the packer's placement order
        for s in order:
            ids = torch.tensor([s.input_ids])
            alone = model(input_ids=ids, position_ids=torch.arange(len(s.input_ids))[None]).logits[0]
            piece = packed[start : start + len(s.input_ids)]
            assert torch.equal(batch["input_ids"][0, start : start + len(s.input_ids)], ids[0])
            torch.testing.assert_close(piece, alone, rtol=1e-5, atol=1e-5)
            start += len(s.input_ids)
    # Control: with one ordinary causal mask over the row (no sample boundaries) the later samples differ,
    # so the equality above is due to the block-diagonal mask and not to a model that ignores context.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"][:1], attention_mask=torch.ones_like(batch["input_ids"][:1])).logits[
            0
        ]
    last = order[-1]
    assert not torch.allclose(
        leaky[start - len(last.input_ids) : start], packed[start - len(last.input_ids) : start], atol=1e-3
    )


def test_position_ids_restart_per_sample_and_first_token_untrained():
    a, b, c = sample([5, 6, 7], 1), sample([8, 9], 0), sample([10, 11, 12, 13], 2)
    [row] = pack([a, b, c], max_length=16)
    assert row.input_ids == [10, 11, 12, 13, 5, 6, 7, 8, 9]
    assert row.position_ids == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    # The first token of every sample is never a target (it would be predicted from the previous sample).
    assert row.labels == [IGNORE, IGNORE, 12, 13, IGNORE, 6, 7, IGNORE, 9]


def test_pack_respects_max_length_and_keeps_every_sample():
    samples = [sample(list(range(1, n + 1)), 0) for n in (7, 5, 4, 3, 3, 2, 1)]
    rows = pack(samples, max_length=8)
    assert all(len(r) <= 8 for r in rows)
    assert sum(len(r) for r in rows) == sum(len(s.input_ids) for s in samples)
    assert len(rows) == 4  # 25 tokens need at least 4 rows of 8


def test_collate_pads_as_its_own_block_with_no_labels():
    rows = make_rows([sample([1, 2, 3], 0), sample([4], 0)], 8, packing=False)
    batch = collate(rows, pad_id=0)
    assert batch["position_ids"][1].tolist() == [0, 0, 1]  # sample [0], then a padding block restarting at 0
    assert batch["labels"][1].tolist() == [IGNORE, IGNORE, IGNORE]
    assert int(batch["n_real"]) == 4


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    rows = make_rows([sample([i, i + 1], 0) for i in range(10)], 8, packing=False)
    first = [[r.input_ids for r in b] for b in batches(rows, 3, seed=1, epoch=2)]
    again = [[r.input_ids for r in b] for b in batches(rows, 3, seed=1, epoch=2)]
    other = [[r.input_ids for r in b] for b in batches(rows, 3, seed=1, epoch=3)]
    assert first == again and first != other


def test_training_loss_of_a_packed_row_is_the_sum_of_its_samples_alone(fp32_phi3):
    """Through train/loss.py, the function training calls: packing changes no sample's loss."""
    from phinetune.train.loss import loss_sum

    model, tokenizer = fp32_phi3
    model.set_attn_implementation("sdpa")
    samples = _samples(tokenizer)
    with torch.no_grad():
        packed, n_packed = loss_sum(model, collate(pack(samples, 200), tokenizer.pad_token_id))
        alone = [loss_sum(model, collate(make_rows([s], 200, False), tokenizer.pad_token_id)) for s in samples]
    assert n_packed == sum(n for _, n in alone) == sum(s.n_trained for s in samples)
    torch.testing.assert_close(packed, sum(loss for loss, _ in alone), rtol=1e-5, atol=1e-4)
