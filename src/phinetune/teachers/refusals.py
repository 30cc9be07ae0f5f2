"""Whether a teacher's reply is a refusal rather than an answer (synth drops it, judge counts it as no verdict)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Matched case-insensitively within the first 80 characters, where refusals and meta-talk begin.
# Specific phrases only: riddles are often in the first person ("I cannot be seen..."), so plain "i cannot" would
# throw away good data.
REFUSALS = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "as an ai",
    "as a language model",
    "i cannot help",
    "i can't help",
    "i cannot assist",
    "i can't assist",
    "i'm unable to",
    "i am unable to",
)


def is_refusal(text: str, phrases: Iterable[str]) -> bool:
    head = text[:80].lower().replace("’", "'")
    return any(re.search(rf"(?<!\w){re.escape(p.lower())}(?!\w)", head) for p in phrases)
