"""Near-duplicate texts: the Jaccard similarity of their shingle sets at or above a threshold, found with datasketch.

datasketch's MinHash and MinHashLSH propose candidate pairs without comparing every pair; each candidate is then
confirmed with the exact Jaccard similarity, so a reported pair is a real one. What LSH can get wrong is a pair it
never proposes, so the bands are chosen here for recall (`bands`), not with datasketch's own optimum. Used by
synth's cleaning (generated questions against each other and the seed questions) and eval's contamination check
(training samples against benchmark items); each says what its shingles are.

Deterministic: MinHash's permutations come from a fixed seed and its hash is SHA-1, so the same texts find the
same pairs in every process (a resumed synth run cleans to the very same item set).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

NUM_PERM = 128
# The chance that a pair exactly at the threshold shares a band (higher above it). 0.999 finds every near-duplicate
# that a comparison of all pairs finds in 1,800 riddle questions and their rewordings at thresholds 0.5 to 0.9
# (0.99 missed one at 0.8; the hand-written MinHash this replaced missed 53 at 0.5).
RECALL = 0.999


def bands(threshold: float, num_perm: int = NUM_PERM, recall: float = RECALL) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) that still propose a pair at `threshold`
    with probability >= `recall`.

    Why not MinHashLSH(threshold=...): its optimum weighs a missed pair and a false candidate equally, and
    proposes a pair at the threshold only 40-55% of the time (0.5 to 0.7, 128 permutations). A false candidate
    costs one exact Jaccard here; a missed pair is a duplicate kept.
    """
    for rows in range(num_perm // 2, 0, -1):  # datasketch wants two bands at least
        count = num_perm // rows
        if 1 - (1 - threshold**rows) ** count >= recall:
            return count, rows
    return num_perm, 1


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(shingles: Iterable[str], num_perm: int = NUM_PERM):
    from datasketch import MinHash

    found = MinHash(num_perm=num_perm)
    found.update_batch(s.encode() for s in shingles)
    return found


class NearDuplicates:
    """Add shingle sets under keys; `find` returns the earlier keys whose Jaccard with a new set is >= threshold."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM, recall: float = RECALL):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(num_perm=num_perm, params=bands(threshold, num_perm, recall))
        self.sets: dict[Hashable, frozenset] = {}

    def add(self, key: Hashable, shingles: frozenset, signature=None) -> None:
        self.sets[key] = shingles
        self.lsh.insert(key, signature if signature is not None else minhash(shingles, self.num_perm))

    def find(self, shingles: frozenset, signature=None) -> dict[Hashable, float]:
        """key -> Jaccard for every added set at or above the threshold (confirmed exactly)."""
        found = {}
        for key in self.lsh.query(signature if signature is not None else minhash(shingles, self.num_perm)):
            score = jaccard(shingles, self.sets[key])
            if score >= self.threshold:
                found[key] = score
        return found
