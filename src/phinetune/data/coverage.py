"""Per-turn loss-mask coverage: the counts the pre-flight checks and `data inspect` reports, from one function.

For every chat sample (one with assistant turns, see Rendered.turns) and every assistant turn the mask
policy trains: is the turn's own closing end-of-turn token trained, or was it cut by data.max_length?
And is anything trained outside the assistant turns (never, under `assistant` / `last_assistant`)?
A turn whose end-of-turn token lies inside the kept tokens but is not trained, or a trained token outside
the turns, is a violation (a bug, named by file:line and turn), not a matter of settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from phinetune.data.render import IGNORE, MaskPolicy, Rendered


@dataclass
class Coverage:
    chat_samples: int = 0
    turns: int = 0  # assistant turns the mask policy trains
    turns_eot_trained: int = 0  # of those, turns whose own end-of-turn token carries a label
    turns_cut: int = 0  # of those, turns whose end-of-turn token falls past data.max_length
    turns_without_eot: list[str] = field(
        default_factory=list
    )  # "file:line turn k": the template closes it with no end-of-turn token
    last_eot_trained: int = 0  # chat samples whose last assistant turn keeps its end-of-turn token
    needed: list[int] = field(default_factory=list)  # per chat sample: tokens needed to keep its last end-of-turn token
    violations: list[str] = field(default_factory=list)

    @property
    def last_eot_share(self) -> float:
        return self.last_eot_trained / self.chat_samples if self.chat_samples else 1.0

    def max_length_for(self, share: float) -> int:
        """The smallest data.max_length that keeps the last end-of-turn token of `share` of the chat samples."""
        if not self.needed:
            return 0
        ranked = sorted(self.needed)
        return ranked[max(0, math.ceil(share * len(ranked)) - 1)]

    def summary(self) -> dict:
        return {
            "chat_samples": self.chat_samples,
            "turns": self.turns,
            "turns_eot_trained": self.turns_eot_trained,
            "turns_cut_by_max_length": self.turns_cut,
            "turns_without_eot": len(self.turns_without_eot),
            "last_eot_trained": self.last_eot_trained,
            "last_eot_share": round(self.last_eot_share, 4),
            "violations": self.violations,
        }


def coverage(samples: Iterable[Rendered], policy: MaskPolicy, eot: str = "") -> Coverage:
    out = Coverage()
    for r in samples:
        add_sample(out, r, policy, eot)
    return out


def needed_length(r: Rendered) -> int:
    """Tokens a chat sample needs to keep its last end-of-turn token (all of it when the turn has none)."""
    last = r.turns[-1][2]
    return last + 1 if last >= 0 else r.full_length


def add_sample(out: Coverage, r: Rendered, policy: MaskPolicy, eot: str = "") -> None:
    if not r.turns:
        return
    out.chat_samples += 1
    kept = len(r.labels)
    chosen = list(enumerate(r.turns, 1))
    if policy == "last_assistant":
        chosen = chosen[-1:]
    for k, (_, _, own) in chosen:
        out.turns += 1
        if own < 0:
            out.turns_without_eot.append(f"{r.where} assistant turn {k}")
        elif own >= kept:
            out.turns_cut += 1
        elif r.labels[own] == IGNORE:
            out.violations.append(
                f"{r.where}: assistant turn {k}: its own end-of-turn token {eot} (position {own}) is not trained"
            )
        else:
            out.turns_eot_trained += 1
    last = r.turns[-1][2]
    out.needed.append(needed_length(r))
    out.last_eot_trained += 0 <= last < kept and r.labels[last] != IGNORE
    if policy != "all":
        inside = set()
        for _, (start, end, _) in chosen:
            inside.update(range(start, end))
        outside = [p for p, label in enumerate(r.labels) if label != IGNORE and p not in inside]
        if outside:
            out.violations.append(
                f"{r.where}: {len(outside)} token(s) trained outside the assistant turns "
                f"(first at position {outside[0]}, policy {policy})"
            )
