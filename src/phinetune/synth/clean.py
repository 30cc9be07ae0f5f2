"""Cleaning generated questions: normalize, filter, and remove exact and near duplicates, with a report.

Near-duplicates: Jaccard similarity of character 5-gram sets, found with datasketch's MinHash LSH and confirmed
with the exact Jaccard (data/near_duplicates.py, shared with eval's contamination check). Everything is
deterministic: a resumed run must clean to the very same item set, or later stages would ask different questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from phinetune.data.near_duplicates import NearDuplicates, minhash
from phinetune.synth.config import CleanStage
from phinetune.teachers.refusals import is_refusal

NUMBERING = re.compile(
    r"^\s*(?:[-*•·]+|\(?\d{1,3}[.):\]]|\(?[a-zA-Z][.)]\s|(?:riddle|question|q)\s*\d*\s*[:.)-])\s*", re.IGNORECASE
)
QUOTES = "\"'“”‘’`«»"
ROLE_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:user|human|kid|child|question)\s*(?:\*\*)?\s*:\s*", re.IGNORECASE)


def normalize_line(text: str) -> str:
    """Strip list numbering/bullets, surrounding quotes and markdown bold, collapse whitespace."""
    text = " ".join(text.split())
    for _ in range(2):  # numbering inside quotes and quotes inside numbering both occur
        text = NUMBERING.sub("", text, count=1).strip()
        text = text.strip("*").strip()
        if len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
            text = text[1:-1].strip()
    return text


def normalize_turn(text: str) -> str:
    """A generated user turn: drop a leading 'user:' label and surrounding quotes; keep the text otherwise."""
    text = ROLE_PREFIX.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
        text = text[1:-1].strip()
    return text


def split_lines(text: str) -> list[str]:
    return [line for line in (normalize_line(raw) for raw in text.splitlines()) if line]


def canonical(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


# --- near-duplicates ------------------------------------------------------------------------------

SHINGLE = 5


def shingles(text: str) -> frozenset[str]:
    c = canonical(text)
    return frozenset(c[i : i + SHINGLE] for i in range(max(1, len(c) - SHINGLE + 1)))


# --- the filter chain -----------------------------------------------------------------------------


@dataclass
class CleanReport:
    kept: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # up to 3 removed texts per filter

    def drop(self, reason: str, text: str) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(text[:160])

    def as_dict(self) -> dict:
        return {
            "kept": self.kept,
            "removed": self.removed,
            "removed_total": sum(self.removed.values()),
            "examples": self.examples,
        }


def _reason(text: str, cfg: CleanStage) -> str | None:
    checks = (
        ("empty", lambda t: not t.strip()),
        ("too_short", lambda t: len(t) < cfg.min_chars),
        ("too_long", lambda t: len(t) > cfg.max_chars),
        ("refusal_or_meta", lambda t: is_refusal(t, cfg.refusals)),
        ("not_a_question", lambda t: cfg.require_question and "?" not in t),
    )
    return next((name for name, failed in checks if failed(text)), None)


def clean_items(
    items: list[tuple[str, str, str]], seeds: list[str], cfg: CleanStage
) -> tuple[list[tuple[str, str, str]], CleanReport]:
    """items: (id, text, origin) in a deterministic order; returns the survivors and what each filter removed.

    Every item is checked against the items kept before it; synthetic items are also checked against
    all seeds (against_seeds), so a teacher copying its examples back is caught.
    """
    report = CleanReport()
    seen, kept_index = set(), NearDuplicates(cfg.near_duplicate)
    seed_exact, seed_index = set(), NearDuplicates(cfg.near_duplicate)
    if cfg.against_seeds:
        for n, seed in enumerate(seeds):
            seed_exact.add(canonical(seed))
            seed_index.add(f"seed:{n}", shingles(seed))
    kept = []
    for ident, text, origin in items:
        text = normalize_line(text)
        reason = _reason(text, cfg)
        if reason is None:
            key, sh = canonical(text), shingles(text)
            sig = minhash(sh)
            vs_seeds = cfg.against_seeds and origin != "seed"
            reason = _duplicate(key, sh, sig, seed_exact, seed_index, "_of_seed") if vs_seeds else None
            reason = reason or _duplicate(key, sh, sig, seen, kept_index, "")
        if reason is not None:
            report.drop(reason, text)
            continue
        seen.add(key)
        kept_index.add(ident, sh, sig)
        kept.append((ident, text, origin))
    if cfg.max_items is not None and len(kept) > cfg.max_items:
        for _, text, _ in kept[cfg.max_items :]:
            report.drop("over_max_items", text)
        kept = kept[: cfg.max_items]
    report.kept = len(kept)
    return kept, report


def _duplicate(key: str, sh: frozenset, sig, exact: set[str], index: NearDuplicates, suffix: str) -> str | None:
    if key in exact:
        return "exact_duplicate" + suffix
    if index.find(sh, sig):
        return "near_duplicate" + suffix
    return None
