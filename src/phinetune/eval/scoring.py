"""Score multiple-choice items by the log-likelihood of each option, the way the LM Evaluation Harness does.

For each option we sum log p(continuation tokens | context) with one forward pass over context+continuation;
`acc` picks the option with the highest sum, `acc_norm` divides each sum by the option's length in characters
(lm-eval's length normalization). Standard errors are the sample standard deviation over items / sqrt(n).

Written by hand rather than through lm-eval because lm-eval is an optional extra and its task loading wants the
Hub; the tokenization rules below copy lm-eval's so the two agree (tests/test_harness.py checks they do).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from phinetune.eval.tasks import Doc, Task
from phinetune.progress import track

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass
class TaskResult:
    task: str
    n: int
    shots: int
    metrics: dict[str, float]
    stderr: dict[str, float]
    items: list[dict] = field(default_factory=list)  # per item: hits {metric: 0/1}, and gold/lls/preds from our scorer

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "n": self.n,
            "shots": self.shots,
            "metrics": self.metrics,
            "stderr": self.stderr,
            "items": self.items,
        }


def fewshot_prefixes(docs: list[Doc], pool: list[Doc], shots: int, seed: int = FEWSHOT_SEED) -> list[str]:
    """The few-shot preamble of each doc: `shots` solved examples, each followed by a blank line.

    Drawn like lm-eval's sampler (one seeded Random, consumed in item order); with no training pool the
    examples come from the eval items themselves, never the item being asked.
    """
    if shots == 0:
        return [""] * len(docs)
    rnd, prefixes = random.Random(seed), []
    for doc in docs:
        chosen = rnd.sample(pool, shots) if pool else [d for d in rnd.sample(docs, shots + 1) if d is not doc][:shots]
        prefixes.append("".join(d.shot + FEWSHOT_DELIMITER for d in chosen))
    return prefixes


def build_requests(docs: list[Doc], prefixes: list[str]) -> list[list[Request]]:
    return [
        [Request(prefix + ctx, TARGET_DELIMITER + cont) for ctx, cont in zip(doc.contexts, doc.continuations)]
        for doc, prefix in zip(docs, prefixes)
    ]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's HFLM._encode_pair: trailing spaces move to the continuation, and the continuation tokens are
    those of the whole string after the context's own tokens (so merges across the boundary count as lm-eval's)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:  # lm-eval conditions an empty context on the BOS (else EOS) token
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def max_context(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or 2048)


@torch.no_grad()
def loglikelihoods(
    model, tokenizer, requests: list[Request], batch_size: int = 16, show: str = ""
) -> list[tuple[float, bool]]:
    """(sum of log-probs of the continuation, whether greedy decoding would produce it) per request.

    Requests are sorted longest-first so each batch pads little, right-padded, and scattered back in order.
    """
    limit = max_context(model)
    encoded = []
    for r in requests:
        ctx, cont = encode_pair(tokenizer, r.context, r.continuation)
        encoded.append(((ctx + cont)[-(limit + 1) :][:-1], len(cont), cont))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for batch in track(batches, show, total=len(batches)) if show else batches:
        width = len(encoded[batch[0]][0])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = encoded[i][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            seq, n_cont, cont = encoded[i]
            # Only the continuation's positions go through log_softmax (a full-vocab softmax over every position
            # would cost batch x length x vocab memory for nothing).
            piece = torch.log_softmax(logits[row, len(seq) - n_cont : len(seq)].float(), dim=-1)
            target = torch.tensor(cont, device=piece.device)
            ll = piece.gather(1, target[:, None]).sum().item()
            out[i] = (ll, bool((piece.argmax(-1) == target).all()))
    return out


def mean_stderr(values: list[float]) -> float:
    """lm-eval's mean_stderr: sample standard deviation (n-1) over sqrt(n); 0 for fewer than two items."""
    n = len(values)
    if n < 2:
        return 0.0
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first maximum, like numpy.argmax


def score_items(task: Task, docs: list[Doc], lls: list[list[float]], shots: int) -> TaskResult:
    per_metric: dict[str, list[float]] = {m: [] for m in task.metrics}
    items = []
    for doc, ll in zip(docs, lls):
        pred = argmax(ll)
        pred_norm = argmax([v / max(n, 1) for v, n in zip(ll, doc.norm_lengths)])
        hits = {"acc": float(pred == doc.gold), "acc_norm": float(pred_norm == doc.gold)}
        for m in task.metrics:
            per_metric[m].append(hits[m])
        items.append(
            {
                "hits": {m: hits[m] for m in task.metrics},
                "gold": doc.gold,
                "lls": [round(v, 6) for v in ll],
                "pred": pred,
                "pred_norm": pred_norm,
            }
        )
    metrics = {m: sum(v) / max(len(v), 1) for m, v in per_metric.items()}
    stderr = {m: mean_stderr(v) for m, v in per_metric.items()}
    return TaskResult(task.name, len(docs), shots, metrics, stderr, items)


def evaluate_task(
    model, tokenizer, task: Task, docs: list[Doc], pool: list[Doc], shots: int = 0, batch_size: int = 16, show: str = ""
) -> TaskResult:
    """Zero- or few-shot scores of `docs` (already limited by the caller)."""
    requests = build_requests(docs, fewshot_prefixes(docs, pool, shots))
    flat = [r for group in requests for r in group]
    results = loglikelihoods(model, tokenizer, flat, batch_size, show)
    lls, k = [], 0
    for group in requests:
        lls.append([ll for ll, _ in results[k : k + len(group)]])
        k += len(group)
    return score_items(task, docs, lls, shots)
