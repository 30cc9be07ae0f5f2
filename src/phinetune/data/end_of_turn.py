"""The end-of-turn token of a model, and the ids generation stops on.

It lives beside the renderer because, for a model without a spec, it is read off the chat template's
structure (data/render.py's prefix renders); every verb asks these functions, never a fallback of its own.
"""

from __future__ import annotations

from phinetune.data.render import assistant_turns
from phinetune.models.specs import ModelSpec

PROBE = [{"role": "user", "content": "PHINETUNE PROBE QUESTION"}, {"role": "assistant", "content": "PHINETUNE PROBE ANSWER"}]


def end_of_turn(tokenizer, spec: ModelSpec) -> str:
    """THE end-of-turn token of a model: the one every assistant turn must end with, trained and stopped on.

    The spec's when it has one (every Phi model). Otherwise (a model we have no spec for) it is read off
    the chat template's structure: the first special token of a probe assistant turn (data/render.py
    places the turn by prefix renders, not by searching for the probe's text). Without a chat template,
    or when the turn holds no special token, it is the eos token. Every verb calls this one function.
    """
    if spec.end_of_turn:
        return spec.end_of_turn
    if not tokenizer.chat_template:
        return tokenizer.eos_token
    _, ids, turns = assistant_turns(tokenizer, PROBE, None)
    start, end, _ = turns[0]
    specials = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return next((tokenizer.convert_ids_to_tokens(t) for t in ids[start:end] if t in specials), tokenizer.eos_token)


def stop_token_ids(tokenizer, spec: ModelSpec) -> list[int]:
    names = spec.stop_tokens or (end_of_turn(tokenizer, spec), tokenizer.eos_token)
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in names if t in vocab]
