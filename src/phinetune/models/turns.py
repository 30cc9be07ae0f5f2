"""Which token closes an assistant turn, and which token pads: the two tokenizer facts a fine-tune must get right.

The end-of-turn token is what teaches the model to stop, so it must be trained in every assistant turn.
A spec names it; `model.end_of_turn` overrides it; for a checkpoint phinetune has no spec for, it is read
off the chat template (a probe conversation is rendered and the token right after the assistant's text is
taken), never guessed from eos: several templates close turns with a token other than eos (Phi-4 closes
them with <|im_end|> while its first tokenizer's eos is <|endoftext|>).

Pad must be a token other than the end-of-turn token: collators and exporters that treat pad positions as
"not text" (labels -100 where input == pad, generation configs that stop on pad) would otherwise erase or
stop on the very token the model must learn. Phi-4 shipped pad = eos; its spec names <|dummy_85|> instead.
"""

from __future__ import annotations

from typing import Optional

from phinetune.errors import ConfigError
from phinetune.models.specs import ModelSpec

PROBE = ("PHINETUNE_PROBE_QUESTION", "PHINETUNE_PROBE_ANSWER")
FALLBACK_PAD = "<|phinetune_pad|>"  # added only when the vocabulary has no other token to pad with


def template_end_of_turn(tokenizer) -> Optional[str]:
    """The special/added token the chat template writes right after an assistant's content, or None."""
    if not tokenizer.chat_template:
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": PROBE[0]}, {"role": "assistant", "content": PROBE[1]}],
                                             tokenize=False)
    except Exception:  # a template that refuses this conversation tells us nothing: the caller asks the user
        return None
    at = text.find(PROBE[1])
    if at < 0:
        return None
    after = text[at + len(PROBE[1]):]
    specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    return next((t for t in specials if t and after.startswith(t)), None)


def end_of_turn(tokenizer, spec: ModelSpec, configured: Optional[str] = None) -> str:
    """The end-of-turn token: model.end_of_turn, else the spec's, else read from the template, else eos for
    plain-text use (no template). Raises a ConfigError naming model.end_of_turn when none can be trusted."""
    if configured:
        if _token_id(tokenizer, configured) is None:
            raise ConfigError(f"model.end_of_turn={configured!r} is not a single token of this tokenizer's vocabulary; "
                              "set it to the token the chat template writes after each assistant reply")
        return configured
    if spec.end_of_turn:
        return spec.end_of_turn
    if not tokenizer.chat_template:
        return tokenizer.eos_token
    found = template_end_of_turn(tokenizer)
    if found is None:
        raise ConfigError("cannot tell this model's end-of-turn token: its chat template writes no special token right after "
                          "an assistant reply; set model.end_of_turn to the token that closes assistant turns")
    return found


def fix_pad(tokenizer, spec: ModelSpec, eot: str) -> Optional[str]:
    """Make pad a token distinct from end-of-turn (and from eos, where the spec names a better one).

    Returns a sentence saying what was changed, or None. Order: the spec's pad token; the tokenizer's unk;
    a new dedicated pad token (its embedding row is never read: padded positions are masked out)."""
    before = tokenizer.pad_token
    vocab = tokenizer.get_vocab()
    if spec.pad_token and spec.pad_token in vocab and before in (None, eot, tokenizer.eos_token):
        tokenizer.pad_token = spec.pad_token
    elif before is None:
        tokenizer.pad_token = tokenizer.eos_token  # safe when eos is not the end of turn (checked just below)
    if tokenizer.pad_token == eot:
        unk = tokenizer.unk_token
        if unk and unk != eot and unk in vocab:
            tokenizer.pad_token = unk
        else:
            tokenizer.add_special_tokens({"pad_token": FALLBACK_PAD})
    if tokenizer.pad_token == before:
        return None
    return f"pad token {before or 'none'} -> {tokenizer.pad_token} (pad must differ from the end-of-turn token {eot})"


def _token_id(tokenizer, token: str) -> Optional[int]:
    ids = tokenizer.encode(token, add_special_tokens=False)
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return vocab[token]
    return ids[0] if len(ids) == 1 else None
