"""Reasoning traces inside trained assistant text: find them, count them, and (data.reasoning=answer) untrain them.

Traces are looked for only inside the runs of tokens the renderer already trains, so whatever renderer
decided the mask, a `<think>` in a user turn or in Phi-4-reasoning's system prompt (which quotes the
format) is never taken for a trace. A trace is open tag .. close tag (both tags included); a token is in
it when all of its characters are, so a token that merges the closing tag with the first characters of
the answer stays trained (it carries answer text).
"""

from __future__ import annotations

from dataclasses import replace

from phinetune.data.render import IGNORE, Rendered
from phinetune.errors import DataError

REASONING_VIEWS = (
    "show",
    "hide",
)  # what generate and chat print of a reply's trace: all of it, or the final answer only


def _offsets(rendered: Rendered, tokenizer) -> list[tuple[int, int]]:
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if ids[: len(rendered.input_ids)] != rendered.input_ids:
        # The ids came from somewhere other than tokenizing the text (a renderer change): character
        # positions would not line up with tokens, so refuse rather than mask the wrong ones.
        raise DataError("cannot place the reasoning mask: the rendered ids differ from the tokenized text")
    return offsets[: len(rendered.input_ids)]


def _trained_runs(rendered: Rendered, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for i, label in enumerate(rendered.labels):
        if label == IGNORE:
            continue
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(offsets[a][0], offsets[b][1]) for a, b in runs]


def trace_spans(text: str, start: int, end: int, tags: tuple[str, str]) -> list[tuple[int, int]]:
    """Character spans open..close inside text[start:end]; an unclosed trace runs to the end of the range
    (a truncated sample)."""
    spans, pos = [], start
    while (a := text.find(tags[0], pos, end)) >= 0:
        b = text.find(tags[1], a + len(tags[0]), end)
        stop = end if b < 0 else b + len(tags[1])
        spans.append((a, stop))
        pos = stop
    return spans


def trace_positions(rendered: Rendered, tokenizer, tags: tuple[str, str]) -> list[int]:
    """Indices of trained tokens that lie inside a reasoning trace."""
    offsets = _offsets(rendered, tokenizer)
    spans = [s for lo, hi in _trained_runs(rendered, offsets) for s in trace_spans(rendered.text, lo, hi, tags)]
    return [
        i
        for i, (lo, hi) in enumerate(offsets)
        if rendered.labels[i] != IGNORE and hi > lo and any(a <= lo and hi <= b for a, b in spans)
    ]


def mask_traces(rendered: Rendered, tokenizer, tags: tuple[str, str]) -> Rendered:
    """The same sample with its reasoning traces untrained: only the final answers (and end-of-turn) learn."""
    inside = set(trace_positions(rendered, tokenizer, tags))
    if not inside:
        return rendered
    return replace(rendered, labels=[IGNORE if i in inside else label for i, label in enumerate(rendered.labels)])


def split_reasoning(text: str, tags: tuple[str, str]) -> tuple[str | None, str]:
    """(trace, answer) of a generated reply, as vLLM's reasoning parsers split it; (None, text) without a trace.

    A reply may start inside the trace when the prompt already opened it, so a close tag with no open tag
    before it still ends a trace."""
    open_tag, close_tag = tags
    close = text.find(close_tag)
    if close < 0:
        return None, text
    head, answer = text[:close], text[close + len(close_tag) :]
    start = head.find(open_tag)
    trace = head[start + len(open_tag) :] if start >= 0 else head
    return trace.strip(), answer.strip()
