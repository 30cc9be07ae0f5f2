"""Render a conversation with the model's own chat template and compute its loss mask.

Why by hand: TRL's assistant-only loss needs `{% generation %}` markers in the template, which the real
Phi templates do not have. Instead we render the whole conversation once with the tokenizer's own
template (so the ids are token-for-token what `apply_chat_template` gives), locate each assistant
message (and the end-of-turn token right after it) by character offset, and mark the tokens that fall
inside those spans. This works for any template, and the end-of-turn token is trained by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from phinetune.errors import DataError

IGNORE = -100
MaskPolicy = Literal["assistant", "last_assistant", "all"]


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE where not trained
    text: str
    truncated: bool = False
    full_length: int = 0  # tokens before truncation (for length histograms)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render_text(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def trained_spans(text: str, messages: list[dict], eot: str, policy: MaskPolicy) -> list[tuple[int, int]]:
    """Character spans of the trained assistant content (+ end-of-turn token when it directly follows)."""
    spans, cursor = [], 0
    for msg in messages:
        content = msg["content"]
        start = text.find(content, cursor)
        if start < 0:  # templates that `| trim` the content (Phi-3.5's, several Hub ones) render it stripped
            content = content.strip()
            start = text.find(content, cursor)
        if start < 0:
            raise DataError(f"the chat template dropped or rewrote part of a {msg['role']} message, so its loss mask cannot be placed")
        end = start + len(content)
        cursor = end
        if msg["role"] == "assistant":
            if eot and text.startswith(eot, end):
                end += len(eot)
            spans.append((start, end))
    if policy == "last_assistant":
        spans = spans[-1:]
    return spans


def render_sample(tokenizer, sample: dict, max_length: int, policy: MaskPolicy = "assistant", eot: str = "") -> Rendered:
    """Tokenize one sample ({messages: [...]} or {text: ...}) into ids and labels."""
    if "messages" in sample:
        text = render_text(tokenizer, sample["messages"])
        spans = [(0, len(text))] if policy == "all" else trained_spans(text, sample["messages"], eot, policy)
    else:
        text = sample["text"] + (tokenizer.eos_token or "")
        spans = [(0, len(text))]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [tid if _inside(off, spans, text) else IGNORE for tid, off in zip(ids, offsets)]
    truncated = len(ids) > max_length
    return Rendered(ids[:max_length], labels[:max_length], text, truncated, len(ids))


def _inside(offset: tuple[int, int], spans: list[tuple[int, int]], text: str = "") -> bool:
    # A token that overlaps a span is trained: a merge across the template/content boundary
    # (e.g. "\nThe") still carries content the model must learn to produce. But a template marker that
    # overlaps only by whitespace is not: Phi-3's <|assistant|> has rstrip=True and swallows the leading
    # space of the reply, which would otherwise put the marker itself into the trained span.
    lo, hi = offset
    return any(lo < e and hi > s and ((s <= lo and hi <= e) or not text or text[max(lo, s):min(hi, e)].strip())
               for s, e in spans)


def eot_trained(rendered: Rendered, eot_id: Optional[int]) -> bool:
    """True when at least one end-of-turn token carries a label (it is what teaches the model to stop)."""
    return eot_id is not None and eot_id in rendered.labels
