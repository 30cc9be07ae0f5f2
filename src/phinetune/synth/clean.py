"""Cleaning generated questions: normalize, filter, and remove exact and near duplicates, with a report.

Near-duplicates: Jaccard similarity of character 5-gram sets. MinHash with LSH banding finds candidate
pairs without comparing every pair (written here in ~30 lines with numpy rather than pulling in a
dependency such as datasketch); each candidate is then confirmed with the exact Jaccard, so the result
is exact for pairs the bands catch. Everything is deterministic (crc32, fixed seeds): a resumed run must
clean to the very same item set, or later stages would ask different questions.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from phinetune.synth.config import CleanStage

NUMBERING = re.compile(r"^\s*(?:[-*•·]+|\(?\d{1,3}[.):\]]|\(?[a-zA-Z][.)]\s|(?:riddle|question|q)\s*\d*\s*[:.)-])\s*", re.IGNORECASE)
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


def is_refusal(text: str, phrases: Iterable[str]) -> bool:
    head = text[:80].lower().replace("’", "'")
    return any(re.search(rf"(?<!\w){re.escape(p.lower())}(?!\w)", head) for p in phrases)


def canonical(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


# --- near-duplicates ------------------------------------------------------------------------------

SHINGLE = 5
NUM_PERM, BANDS = 64, 16  # 16 bands of 4 rows: pairs at Jaccard 0.7 share a band with probability ~0.98
_PRIME = (1 << 31) - 1  # h < 2^32 and a < 2^31: a*h < 2^63 fits uint64, and the modulus really mixes
_RNG = np.random.default_rng(20240131)
_A = _RNG.integers(1, _PRIME, NUM_PERM, dtype=np.uint64)
_B = _RNG.integers(0, _PRIME, NUM_PERM, dtype=np.uint64)


def shingles(text: str) -> frozenset[int]:
    c = canonical(text)
    grams = {c[i:i + SHINGLE] for i in range(max(1, len(c) - SHINGLE + 1))}
    return frozenset(zlib.crc32(g.encode()) for g in grams)


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(sh: frozenset[int]) -> np.ndarray:
    h = np.fromiter(sh, dtype=np.uint64, count=len(sh))
    return ((np.outer(_A, h) + _B[:, None]) % _PRIME).min(axis=1)


class NearDupIndex:
    """Add texts one by one; `find` returns the id of an earlier text at or above the threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.buckets: dict[tuple, list[str]] = {}
        self.sets: dict[str, frozenset] = {}

    def find(self, sh: frozenset, sig: np.ndarray) -> Optional[str]:
        rows = NUM_PERM // BANDS
        seen = set()
        for b in range(BANDS):
            for other in self.buckets.get((b, sig[b * rows:(b + 1) * rows].tobytes()), ()):
                if other not in seen:
                    seen.add(other)
                    if jaccard(sh, self.sets[other]) >= self.threshold:
                        return other
        return None

    def add(self, ident: str, sh: frozenset, sig: np.ndarray) -> None:
        rows = NUM_PERM // BANDS
        self.sets[ident] = sh
        for b in range(BANDS):
            self.buckets.setdefault((b, sig[b * rows:(b + 1) * rows].tobytes()), []).append(ident)


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
        return {"kept": self.kept, "removed": self.removed, "removed_total": sum(self.removed.values()), "examples": self.examples}


def _reason(text: str, cfg: CleanStage) -> Optional[str]:
    checks = (
        ("empty", lambda t: not t.strip()),
        ("too_short", lambda t: len(t) < cfg.min_chars),
        ("too_long", lambda t: len(t) > cfg.max_chars),
        ("refusal_or_meta", lambda t: is_refusal(t, cfg.refusals)),
        ("not_a_question", lambda t: cfg.require_question and "?" not in t),
    )
    return next((name for name, failed in checks if failed(text)), None)


def clean_items(items: list[tuple[str, str, str]], seeds: list[str], cfg: CleanStage) -> tuple[list[tuple[str, str, str]], CleanReport]:
    """items: (id, text, origin) in a deterministic order; returns the survivors and what each filter removed.

    Every item is checked against the items kept before it; synthetic items are also checked against
    all seeds (against_seeds), so a teacher copying its examples back is caught.
    """
    report = CleanReport()
    seen, kept_index = set(), NearDupIndex(cfg.near_duplicate)
    seed_exact, seed_index = set(), NearDupIndex(cfg.near_duplicate)
    if cfg.against_seeds:
        for n, seed in enumerate(seeds):
            sh = shingles(seed)
            seed_exact.add(canonical(seed))
            seed_index.add(f"seed:{n}", sh, minhash(sh))
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
        for _, text, _ in kept[cfg.max_items:]:
            report.drop("over_max_items", text)
        kept = kept[:cfg.max_items]
    report.kept = len(kept)
    return kept, report


def _duplicate(key: str, sh: frozenset, sig: np.ndarray, exact: set[str], index: NearDupIndex, suffix: str) -> Optional[str]:
    if key in exact:
        return "exact_duplicate" + suffix
    if index.find(sh, sig) is not None:
        return "near_duplicate" + suffix
    return None
