"""The expected loss mask, written by hand from each template's layout (independent of data/render.py).

Each template is spelled out as segments (text, kind, turn): markup, a user/system content, an assistant
reply or that reply's own end-of-turn token. Joined, the segments must equal the template's rendering
(checked), so the layout cannot silently drift from the real template. A token of the rendered text is
then expected to be trained when its characters overlap the reply or own end-of-turn segment of a chosen
assistant turn, unless it is a special token that begins in markup (Phi-3/Phi-4's `<|assistant|>` strips
the whitespace after it, so its span reaches into a reply that starts with spaces: it is still the
prompt's marker). A plain token that begins in markup and carries reply characters (Phi-2 ChatML's
`\\n` merged with a reply starting with `\\n`) is trained: the model must produce those characters.
"""

from __future__ import annotations

MARKUP, USER, SYSTEM, REPLY, EOT = "markup", "user", "system", "reply", "eot"


def _phi3(messages, bos, eos, system_if_content=False):
    segs = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system" and system_if_content and not content:
            continue
        kind = {"system": SYSTEM, "user": USER, "assistant": REPLY}[role]
        segs += [
            (f"<|{role}|>\n", MARKUP),
            (content, kind),
            ("<|end|>", EOT if role == "assistant" else MARKUP),
            ("\n", MARKUP),
        ]
    return segs + [(eos, MARKUP)]


def _phi3_128k(messages, bos, eos):
    segs = [(bos, MARKUP)]
    for m in messages:
        if m["role"] == "user":
            segs += [("<|user|>\n", MARKUP), (m["content"], USER), ("<|end|>", MARKUP), ("\n<|assistant|>\n", MARKUP)]
        elif m["role"] == "assistant":
            segs += [(m["content"], REPLY), ("<|end|>", EOT), ("\n", MARKUP)]
    return segs


def _phi4(messages, bos, eos):
    segs = []
    for m in messages:
        role = m["role"]
        kind = {"system": SYSTEM, "user": USER, "assistant": REPLY}[role]
        segs += [(f"<|{role}|>", MARKUP), (m["content"], kind), ("<|end|>", EOT if role == "assistant" else MARKUP)]
    return segs + [(eos, MARKUP)]


def _chatml(messages, bos, eos):
    segs = []
    for m in messages:
        role = m["role"]
        kind = {"system": SYSTEM, "user": USER, "assistant": REPLY}[role]
        segs += [
            (f"<|im_start|>{role}\n", MARKUP),
            (m["content"], kind),
            ("<|im_end|>", EOT if role == "assistant" else MARKUP),
            ("\n", MARKUP),
        ]
    return segs


def _phi4_chatml(messages, bos, eos):
    segs = []
    for m in messages:
        role = m["role"]
        kind = {"system": SYSTEM, "user": USER, "assistant": REPLY}[role]
        segs += [
            (f"<|im_start|>{role}<|im_sep|>", MARKUP),
            (m["content"], kind),
            ("<|im_end|>", EOT if role == "assistant" else MARKUP),
        ]
    return segs


def _phi4_reasoning(messages, bos, eos):
    # Phi-4-reasoning: Phi-4's turns, with the model card's reasoning system prompt first when there is no system turn.
    from phinetune.models.specs import PHI4_REASONING_PROMPT

    lead = (
        []
        if messages and messages[0]["role"] == "system"
        else [("<|im_start|>system<|im_sep|>", MARKUP), (PHI4_REASONING_PROMPT, MARKUP), ("<|im_end|>", MARKUP)]
    )
    return lead + _phi4_chatml(messages, bos, eos)


LAYOUTS = {
    "phi4-chatml.jinja": _phi4_chatml,
    "phi4-reasoning.jinja": _phi4_reasoning,
    "phi3.jinja": _phi3,
    "phi3.5.jinja": lambda m, b, e: _phi3(m, b, e, system_if_content=True),
    "phi3-128k.jinja": _phi3_128k,
    "phi4.jinja": _phi4,
    "chatml.jinja": _chatml,
}


def segments(template: str, messages: list[dict], bos: str, eos: str) -> list[tuple[int, int, str, int]]:
    """(start char, end char, kind, assistant turn index or -1) for each segment of the rendering."""
    out, pos, turn = [], 0, -1
    for text, kind in LAYOUTS[template](messages, bos, eos):
        if kind == REPLY:
            turn += 1
        out.append((pos, pos + len(text), kind, turn if kind in (REPLY, EOT) else -1))
        pos += len(text)
    return out


def layout_text(template: str, messages: list[dict], bos: str, eos: str) -> str:
    return "".join(text for text, _ in LAYOUTS[template](messages, bos, eos))


def expected_labels(tokenizer, template: str, messages: list[dict], policy: str) -> tuple[list[int], list[bool]]:
    """(ids, trained) for the conversation: the tokenizer's own ids, the mask from the hand layout."""
    text = layout_text(template, messages, tokenizer.bos_token or "", tokenizer.eos_token or "")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if policy == "all":
        return ids, [True] * len(ids)
    segs = segments(template, messages, tokenizer.bos_token or "", tokenizer.eos_token or "")
    n_turns = 1 + max((t for *_, t in segs), default=-1)
    chosen = {n_turns - 1} if policy == "last_assistant" else set(range(n_turns))
    specials = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    trained = []
    for tid, (lo, hi) in zip(ids, offsets):
        hits = [s for s in segs if s[3] in chosen and s[0] < hi and lo < s[1]]
        starts_inside = any(s[0] <= lo < s[1] for s in hits)
        trained.append(bool(hits) and (starts_inside or tid not in specials))
    return ids, trained


def content_overlap(tokenizer, template: str, messages: list[dict], trained: list[bool]) -> list[str]:
    """Kinds of user/system content that trained tokens overlap (must be empty under assistant masks)."""
    text = layout_text(template, messages, tokenizer.bos_token or "", tokenizer.eos_token or "")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    segs = segments(template, messages, tokenizer.bos_token or "", tokenizer.eos_token or "")
    bad = []
    for (lo, hi), is_trained in zip(enc["offset_mapping"], trained):
        if is_trained:
            bad += [
                f"{kind} chars {max(lo, s)}:{min(hi, e)}"
                for s, e, kind, _ in segs
                if kind in (USER, SYSTEM) and s < hi and lo < e
            ]
    return bad
