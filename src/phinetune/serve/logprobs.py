"""Log-probabilities of tokens, for `logprobs`/`top_logprobs` (chat) and `echo` + `logprobs` (completions).

They come from one forward pass over prompt + generated tokens after generation, not from generate()'s
scores: the same pass then scores echoed prompt tokens (what lm-eval's local-completions model needs for
log-likelihood tasks) and generated ones, on the model's raw distribution (before temperature/top-k/top-p,
as vLLM's default), and it is the computation eval/scoring.py does, so the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOOR = -9999.0  # OpenAI's stand-in for -inf (JSON has no infinity)


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None for the very first token: nothing comes before it to condition on
    top: list[tuple[str, float]]  # the k most likely tokens at this position, best first


@torch.no_grad()
def score_tokens(loaded, ids: list[int], start: int, top_k: int) -> list[TokenLogprob]:
    """Log p(ids[i] | ids[:i]) and the top_k alternatives, for i in start..len(ids)-1."""
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    first = max(start, 1)
    out = [TokenLogprob(tok.decode([ids[0]]), None, [])] if start == 0 and ids else []
    if first >= len(ids):
        return out
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, first - 1 : len(ids) - 1].float()
    logp = torch.log_softmax(logits, dim=-1)  # row j predicts token first + j
    chosen = logp.gather(1, torch.tensor(ids[first:], device=device)[:, None])[:, 0].tolist()
    tops = torch.topk(logp, top_k, dim=-1) if top_k else None
    for j, token in enumerate(ids[first:]):
        top = list(zip(tops.indices[j].tolist(), tops.values[j].tolist())) if tops is not None else []
        out.append(
            TokenLogprob(tok.decode([token]), max(chosen[j], FLOOR), [(tok.decode([t]), max(v, FLOOR)) for t, v in top])
        )
    return out


def completion_logprobs(tokens: list[TokenLogprob]) -> dict:
    """The legacy completions shape; each position's top_logprobs also holds the chosen token, as OpenAI's do."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    tops = [None if t.logprob is None else _top_dict(t) for t in tokens]
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _top_dict(t: TokenLogprob) -> dict:
    top: dict = {}
    for token, logprob in [*t.top, (t.token, t.logprob)]:
        top.setdefault(token, logprob)  # two ids may decode alike: keep the likelier
    return top


def chat_logprobs(tokens: list[TokenLogprob]) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [entry(t.token, t.logprob) | {"top_logprobs": [entry(s, v) for s, v in t.top]} for t in tokens],
        "refusal": None,
    }
