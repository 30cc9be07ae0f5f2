"""Log-likelihood scoring: tokenization split like lm-eval, batching changes nothing, acc vs acc_norm, stderr."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from phinetune.eval.scoring import (
    Request,
    build_requests,
    encode_pair,
    evaluate_task,
    fewshot_prefixes,
    loglikelihoods,
    mean_stderr,
    score_items,
)
from phinetune.eval.tasks import TASKS, choice_doc


def test_encode_pair_moves_trailing_space_and_splits_whole_string(tiny_phi3):
    _, tok = tiny_phi3
    ctx, cont = encode_pair(tok, "Question: why?\nAnswer: ", "Because")
    assert ctx == tok.encode("Question: why?\nAnswer:")
    assert ctx + cont == tok.encode("Question: why?\nAnswer: Because")
    first, _ = encode_pair(tok, "", "hello")
    assert first == [tok.bos_token_id]


def manual_ll(model, tok, context: str, continuation: str) -> float:
    ctx, cont = encode_pair(tok, context, continuation)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))


def test_batched_loglikelihoods_equal_one_by_one(tiny_phi3):
    model, tok = tiny_phi3
    model.eval()
    reqs = [
        Request("Question: What has keys but no locks?\nAnswer:", " A piano"),
        Request("The cat", " sat on the mat."),
        Request("A", " b"),
        Request("Question: What has keys but no locks?\nAnswer:", " A map with many roads"),
    ]
    batched = loglikelihoods(model, tok, reqs, batch_size=4)
    single = loglikelihoods(model, tok, reqs, batch_size=1)
    for (a, _), (b, _), r in zip(batched, single, reqs):
        assert a == pytest.approx(b, abs=1e-4)
        assert a == pytest.approx(manual_ll(model, tok, r.context, r.continuation), abs=1e-4)
        assert a < 0


def test_acc_norm_divides_by_characters_like_lm_eval():
    task = TASKS["arc_easy"]
    doc = choice_doc("Question: q\nAnswer:", ["a", "a much longer answer"], gold=1)  # lengths 1 and 20
    # raw: option 0 wins (-2 > -10); per character: -2/1 = -2 < -10/20 = -0.5, option 1 wins
    result = score_items(task, [doc], [[-2.0, -10.0]], shots=0)
    assert result.items[0]["pred"] == 0 and result.items[0]["pred_norm"] == 1
    assert result.metrics == {"acc": 0.0, "acc_norm": 1.0}


def test_stderr_is_sample_sd_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
    assert mean_stderr([1.0]) == 0.0


def test_fewshot_prompts_follow_lm_eval_format():
    docs = [choice_doc(f"Question: q{i}\nAnswer:", ["x", "y"], i % 2) for i in range(6)]
    pool = [choice_doc(f"Question: train{i}\nAnswer:", ["yes", "no"], 0) for i in range(5)]
    prefixes = fewshot_prefixes(docs, pool, shots=2)
    assert all(p.count("\n\n") == 2 and p.endswith("\n\n") and "Answer: yes" in p for p in prefixes)
    self_drawn = fewshot_prefixes(
        docs, [], shots=3
    )  # no training split: examples from the eval items, never the item itself
    for doc, prefix in zip(docs, self_drawn):
        assert prefix.count("\n\n") == 3 and doc.contexts[0] not in prefix
    reqs = build_requests(docs[:1], prefixes[:1])[0]
    assert reqs[0].context == prefixes[0] + "Question: q0\nAnswer:" and [r.continuation for r in reqs] == [" x", " y"]
    assert fewshot_prefixes(docs, pool, 0) == [""] * 6


def test_winogrande_scores_the_shared_suffix_after_each_prefix(tiny_phi3):
    model, tok = tiny_phi3
    doc = TASKS["winogrande"].parse(
        {
            "sentence": "The trophy did not fit in the suitcase because _ was too big.",
            "option1": "the trophy",
            "option2": "the suitcase",
            "answer": "1",
        }
    )
    result = evaluate_task(model, tok, TASKS["winogrande"], [doc], [], shots=0)
    expected = [manual_ll(model, tok, ctx, " was too big.") for ctx in doc.contexts]
    assert result.items[0]["lls"] == pytest.approx(expected, abs=1e-4)
    assert result.items[0]["pred"] == (0 if expected[0] >= expected[1] else 1)
    assert list(result.metrics) == ["acc"]
