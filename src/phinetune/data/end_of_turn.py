"""The end-of-turn token of a model, and the ids generation stops on.

It lives beside the renderer because, for a model without a spec, it is read off the chat template's
structure (data/render.py's prefix renders); every verb asks these functions, never a fallback of its own.
"""

from __future__ import annotations

from phinetune.data.render import assistant_turns
from phinetune.errors import ConfigError
from phinetune.models.specs import ModelSpec

PROBE = [
    {"role": "user", "content": "PHINETUNE PROBE QUESTION"},
    {"role": "assistant", "content": "PHINETUNE PROBE ANSWER"},
]


def end_of_turn(tokenizer, spec: ModelSpec, configured: str | None = None) -> str:
    """THE end-of-turn token of a model: the one every assistant turn must end with, trained and stopped on.

    `model.end_of_turn` when set (it must be one token of the vocabulary); else the spec's (every Phi model).
    Otherwise (a model we have no spec for) it is read off the chat template's structure: the first special
    token of a probe assistant turn (data/render.py places the turn by prefix renders, not by searching for
    the probe's text); never guessed from eos, since several templates close turns with another token
    (Phi-4 with <|im_end|> while its first tokenizer's eos is <|endoftext|>). Without a chat template it is
    eos (plain text); a template whose turn holds no special token is a ConfigError naming model.end_of_turn.
    Every verb calls this one function.
    """
    if configured:
        if configured not in tokenizer.get_vocab():
            raise ConfigError(
                f"model.end_of_turn={configured!r} is not a single token of this tokenizer's vocabulary; "
                "set it to the token the chat template writes after each assistant reply"
            )
        return configured
    if spec.end_of_turn:
        return spec.end_of_turn
    if not tokenizer.chat_template:
        return tokenizer.eos_token
    _, ids, turns = assistant_turns(tokenizer, PROBE, None)
    start, end, _ = turns[0]
    specials = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    found = next((tokenizer.convert_ids_to_tokens(t) for t in ids[start:end] if t in specials), None)
    if found is None:
        raise ConfigError(
            "cannot tell this model's end-of-turn token: its chat template writes no special token after an "
            "assistant reply; set model.end_of_turn to the token that closes assistant turns"
        )
    return found


def stop_token_ids(tokenizer, spec: ModelSpec) -> list[int]:
    try:
        eot = end_of_turn(tokenizer, spec)
    except ConfigError:  # generation of a model whose template names no end of turn: eos is all there is
        eot = tokenizer.eos_token
    names = spec.stop_tokens or (eot, tokenizer.eos_token)
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in names if t in vocab]
