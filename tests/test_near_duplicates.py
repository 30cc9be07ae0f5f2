"""data/near_duplicates.py: datasketch's MinHash LSH with bands chosen for recall, every pair confirmed exactly."""

from __future__ import annotations

import pytest

from phinetune.data.near_duplicates import NUM_PERM, RECALL, NearDuplicates, bands, jaccard, minhash


def grams(text: str, n: int = 5) -> frozenset[str]:
    return frozenset(text[i : i + n] for i in range(max(1, len(text) - n + 1)))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 1.0])
def test_bands_propose_a_pair_at_the_threshold_with_the_recall_asked(threshold):
    b, r = bands(threshold)
    assert b * r <= NUM_PERM and b >= 2  # datasketch wants two bands at least
    assert 1 - (1 - threshold**r) ** b >= RECALL
    if r < NUM_PERM // 2:  # one more row per band would miss too often: the fewest candidates for that recall
        r2 = r + 1
        assert 1 - (1 - threshold**r2) ** (NUM_PERM // r2) < RECALL


def test_minhash_estimates_the_jaccard():
    # Each permutation agrees with probability J; a degenerate hash would give 0 or 1 here.
    pairs = [
        ("what gets wetter the more it dries", "what gets wetter the more that it dries"),
        ("what has keys but cannot open a single lock", "which room has no doors or windows at all"),
        ("i have a face but no eyes what am i", "i have a face and two hands but no eyes what am i"),
    ]
    for a, b in pairs:
        assert abs(minhash(grams(a)).jaccard(minhash(grams(b))) - jaccard(grams(a), grams(b))) < 0.15


def test_find_returns_only_pairs_at_or_above_the_threshold_with_their_exact_jaccard():
    texts = [
        "what gets wetter the more it dries",
        "what gets wetter, the more that it dries",
        "what gets wetter the more it dries?",
        "which room has no doors or windows at all",
    ]
    index = NearDuplicates(0.7)
    for k, text in enumerate(texts[:2] + texts[3:]):
        index.add(k, grams(text))
    found = index.find(grams(texts[2]))
    expected = {k: jaccard(grams(texts[2]), grams(t)) for k, t in enumerate(texts[:2] + texts[3:])}
    assert found == {k: s for k, s in expected.items() if s >= 0.7} and 0 in found and 2 not in found
