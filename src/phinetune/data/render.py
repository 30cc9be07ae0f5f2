"""Render a conversation with the model's own chat template and compute its loss mask by construction.

Why by hand: TRL's assistant-only loss needs `{% generation %}` markers in the template, which the real
Phi templates do not have. Instead the template itself tells us where each assistant turn lies, and no
reply is ever looked up by its text (a reply of `d` or `end` also occurs inside `<|end|>`). For assistant
turn k (message i of the conversation):

- the prompt before it is `messages[:i]` rendered with the generation prompt: the reply starts at the
  first token where the whole conversation's ids leave the prompt's ids;
- the conversation through it is `messages[:i+1]` rendered without the generation prompt: the turn ends
  at the first token where the whole conversation's ids leave those ids (what the template appends only
  at the very end, such as Phi-3's closing eos, is therefore never part of a turn);
- the turn's own end-of-turn token is the LAST end-of-turn id inside that region. Anything the template
  writes after it (the newline of `<|end|>\\n`) is markup, not trained. An end-of-turn string inside the
  reply is tokenized as the special token, as `apply_chat_template` does; it comes before the template's
  own one and is trained as part of the reply.

Trained under `assistant`: each reply's tokens plus its own end-of-turn token; `last_assistant`: the last
of them only; `all`: every token. The ids are always exactly `tokenizer.apply_chat_template(messages)`.

Token boundaries at the cut. Special tokens split the text, so on the Phi templates (prompt ends with
`<|assistant|>`, Phi-3's strips the whitespace after it) the prompt's ids are a prefix of the
conversation's. Byte-level BPE (Phi-2's ChatML ends the prompt with a plain `\\n`) can merge that `\\n`
with a reply that starts with whitespace (`\\n\\n`): the one token that straddles the cut carries reply
characters, so it is trained. If the prompt's ids differ from the conversation's anywhere *before* the
cut, the mask cannot be placed exactly and the sample is refused (DataError), never guessed.

Templates that rewrite content. What is trained is what the template renders for the reply: a template
that trims trains the trimmed reply (exactly what the model sees). A template that drops a non-empty
system or user message (Phi-3-mini-128k's original template has no system role) is refused, unless
`fold_system` folds the system text into the first user turn. A template that renders earlier turns
differently once later turns follow (the prompt is not a text prefix of the conversation) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from phinetune.errors import DataError

IGNORE = -100
MaskPolicy = Literal["assistant", "last_assistant", "all"]
FOLD_HINT = "set data.fold_system=true to fold the system text into the first user turn, or remove the system message"


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE where not trained
    text: str
    truncated: bool = False
    full_length: int = 0  # tokens before truncation (for length histograms)
    # One [start, end, eot] per assistant turn, in positions of the untruncated ids: the reply starts at
    # `start`, the turn (reply + own end-of-turn token) ends before `end`, its own end-of-turn token sits at
    # `eot` (-1: the template closes this turn without one). Empty for plain-text samples.
    turns: list[list[int]] = field(default_factory=list)
    where: str = ""  # file:line of the record it came from (set by data.dataset.render_at)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render_text(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    # Exactly what apply_chat_template(tokenize=True) does with the rendered text.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def fold_system_turn(messages: list[dict]) -> list[dict]:
    """A leading system message folded into the first user turn ("system\\n\\nuser")."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if not system:
        return rest
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            break
    return rest


def check_nothing_dropped(tokenizer, messages: list[dict]) -> None:
    """Refuse a template that drops a non-empty system/user message: emptying it would change nothing."""
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant" or not msg["content"].strip():
            continue
        emptied = messages[:i] + [{**msg, "content": ""}]
        if render_text(tokenizer, messages[: i + 1]) == render_text(tokenizer, emptied):
            hint = f"; {FOLD_HINT}" if msg["role"] == "system" else ""
            raise DataError(
                f"the chat template drops {msg['role']} messages (message {i} would not reach the model){hint}"
            )


def assistant_turns(tokenizer, messages: list[dict], eot_id: int | None) -> tuple[str, list[int], list[list[int]]]:
    """(text, ids, [start, end, eot] per assistant turn) of a conversation, found from the template's structure."""
    text = render_text(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    turns, floor, k = [], 0, 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        k += 1
        if i == 0:
            raise DataError("a conversation cannot start with an assistant message (there is no prompt before it)")
        prompt_text = render_text(tokenizer, messages[:i], generation_prompt=True)
        if not text.startswith(prompt_text):
            raise DataError(
                f"the chat template renders the turns before assistant turn {k} differently once later turns follow, "
                "so its trained tokens cannot be placed by construction"
            )
        prompt = _encode(tokenizer, prompt_text)
        start = _common(prompt, ids)
        # Only the one token straddling the cut may differ (BPE merging the prompt's tail with the reply).
        if start < floor or (start < len(prompt) and (start >= len(ids) or offsets[start][1] <= len(prompt_text))):
            raise DataError(
                f"the tokenizer splits the prompt before assistant turn {k} differently once the reply follows, "
                "so its trained tokens cannot be placed exactly"
            )
        end = _common(_encode(tokenizer, render_text(tokenizer, messages[: i + 1])), ids)
        if end <= start:
            raise DataError(f"assistant turn {k} renders no tokens of its own in the chat template")
        eot = next((p for p in range(end - 1, start - 1, -1) if ids[p] == eot_id), -1) if eot_id is not None else -1
        turns.append([start, eot + 1 if eot >= 0 else end, eot])
        floor = end
    return text, ids, turns


def trained_mask(n: int, turns: list[list[int]], policy: MaskPolicy) -> list[bool]:
    """The one mask policy: which of n positions are trained, given the assistant turns."""
    if policy == "all":
        return [True] * n
    chosen = turns[-1:] if policy == "last_assistant" else turns
    mask = [False] * n
    for start, end, _ in chosen:
        mask[start:end] = [True] * (end - start)
    return mask


def render_sample(
    tokenizer, sample: dict, max_length: int, policy: MaskPolicy = "assistant", eot: str = "", fold_system: bool = False
) -> Rendered:
    """Tokenize one sample ({messages: [...]} or {text: ...}) into ids and labels."""
    if "messages" in sample:
        messages = fold_system_turn(sample["messages"]) if fold_system else sample["messages"]
        check_nothing_dropped(tokenizer, messages)
        text, ids, turns = assistant_turns(tokenizer, messages, token_id(tokenizer, eot))
    else:
        text = sample["text"] + (tokenizer.eos_token or "")
        ids, turns = _encode(tokenizer, text), []
        policy = "all"
    labels = [tid if trained else IGNORE for tid, trained in zip(ids, trained_mask(len(ids), turns, policy))]
    truncated = len(ids) > max_length
    return Rendered(ids[:max_length], labels[:max_length], text, truncated, len(ids), turns)


def token_id(tokenizer, token: str) -> int | None:
    """The id of a single token string, or None when it is not one token of this vocabulary."""
    if not token:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    # Checked by converting back, not against unk: Phi-4's unk token is <|endoftext|>, a real token.
    return tid if tid is not None and tokenizer.convert_ids_to_tokens(tid) == token else None
