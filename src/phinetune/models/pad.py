"""Which token pads: never the token that closes an assistant turn.

Pad must be a token other than the end-of-turn token: collators and exporters that treat pad positions as
"not text" (labels -100 where input == pad, generation configs that stop on pad) would otherwise erase or
stop on the very token the model must learn. Phi-4 shipped pad = eos; its spec names <|dummy_85|> (id
100349, as torchtune's Phi-4 tokenizer pads). The end-of-turn token itself is data/end_of_turn.py's.
"""

from __future__ import annotations

from phinetune.models.specs import ModelSpec

FALLBACK_PAD = "<|phinetune_pad|>"  # added only when the vocabulary has no other token to pad with


def fix_pad(tokenizer, spec: ModelSpec, eot: str) -> str | None:
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
