"""Cleaning: numbering/quotes stripped, each filter removes what it should (and only that), duplicates found."""

import json
import random
from pathlib import Path

import pytest

from conftest import realdata
from phinetune.data.near_duplicates import jaccard
from phinetune.synth.clean import _reason, canonical, clean_items, normalize_line, normalize_turn, shingles, split_lines
from phinetune.synth.config import DEFAULT_REFUSALS, CleanStage, SeedsConfig
from phinetune.synth.stages import read_seeds
from phinetune.teachers.refusals import is_refusal


@pytest.mark.parametrize(
    "raw, clean",
    [
        ('1. "What has keys but opens no locks?"', "What has keys but opens no locks?"),
        ("  - Riddle 3: What is black and white?", "What is black and white?"),
        ("**2)** Who walks on four legs?", "Who walks on four legs?"),
        ("“Why is the sky blue?”", "Why is the sky blue?"),
        ("10) What  gets   wetter?", "What gets wetter?"),
        ("I have a face but no eyes. What am I?", "I have a face but no eyes. What am I?"),  # untouched
    ],
)
def test_normalize_line(raw, clean):
    assert normalize_line(raw) == clean


def test_split_lines_drops_blank_lines():
    assert split_lines("Here you go:\n\n1. A?\n2. B?\n") == ["Here you go:", "A?", "B?"]


def test_normalize_turn_strips_role_label_and_quotes():
    assert normalize_turn('user: "Cool! Why?"') == "Cool! Why?"
    assert normalize_turn("Why does it float?") == "Why does it float?"


def test_refusals_match_whole_phrases_not_first_person_riddles():
    assert is_refusal("I'm sorry, but I can't do that.", DEFAULT_REFUSALS)
    assert is_refusal("Sure, here are ten more riddles:", DEFAULT_REFUSALS)
    assert not is_refusal("I cannot be seen, yet I am everywhere. What am I?", DEFAULT_REFUSALS)
    assert not is_refusal("There are two meanings to me. What am I?", DEFAULT_REFUSALS)


def test_each_filter_reports_what_it_removed():
    seeds = ["What has keys but can't open a single lock?"]
    items = [
        ("a", "What gets wetter the more it dries?", "synthetic"),  # kept
        ("b", "", "synthetic"),  # empty
        ("c", "Why?", "synthetic"),  # too short
        ("d", "What " + "very " * 200 + "long?", "synthetic"),  # too long
        ("e", "I'm sorry, I cannot help with that?", "synthetic"),  # refusal
        ("f", "This line is an answer, not a question.", "synthetic"),  # not a question
        ("g", "What gets wetter the more it dries?", "synthetic"),  # exact duplicate of a
        ("h", "What gets wetter, the more that it dries?", "synthetic"),  # near duplicate of a
        ("i", "what has KEYS, but can't open a single lock?", "synthetic"),  # exact duplicate of the seed (canonical)
        ("j", "What has many keys but can't open a single lock?", "synthetic"),  # near duplicate of the seed
        ("k", "Which room has no doors or windows at all?", "synthetic"),  # kept
    ]
    kept, report = clean_items(items, seeds, CleanStage(min_chars=10, max_chars=200))
    assert [k[0] for k in kept] == ["a", "k"]
    assert report.removed == {
        "empty": 1,
        "too_short": 1,
        "too_long": 1,
        "refusal_or_meta": 1,
        "not_a_question": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "exact_duplicate_of_seed": 1,
        "near_duplicate_of_seed": 1,
    }
    assert report.as_dict()["removed_total"] == 9 and report.kept == 2


def test_near_duplicate_threshold_is_the_jaccard():
    a, b = "What gets wetter the more it dries?", "What gets wetter, the more that it dries?"
    j = jaccard(shingles(a), shingles(b))
    kept_strict, _ = clean_items(
        [("a", a, "synthetic"), ("b", b, "synthetic")], [], CleanStage(near_duplicate=min(1.0, j + 0.01))
    )
    kept_loose, _ = clean_items([("a", a, "synthetic"), ("b", b, "synthetic")], [], CleanStage(near_duplicate=j))
    assert len(kept_strict) == 2 and len(kept_loose) == 1


def test_seeds_are_deduplicated_among_themselves_but_not_against_themselves():
    items = [
        ("s0", "What has a neck but no head?", "seed"),
        ("s1", "What has a neck but no head?", "seed"),
        ("s2", "What runs but never walks?", "seed"),
    ]
    kept, report = clean_items(items, [t for _, t, _ in items], CleanStage())
    assert [k[0] for k in kept] == ["s0", "s2"] and report.removed == {"exact_duplicate": 1}


def test_max_items_caps_in_order():
    items = [
        (str(i), f"Question number {w} about things?", "synthetic")
        for i, w in enumerate(["one", "two", "three", "four"])
    ]
    kept, report = clean_items(items, [], CleanStage(max_items=2, near_duplicate=1.0))
    assert [k[0] for k in kept] == ["0", "1"] and report.removed["over_max_items"] == 2


def test_real_riddle_seed_list_reads_and_cleans():
    path = realdata("datasets", "riddles_crawsome", "riddles.csv")
    seeds, skipped = read_seeds(SeedsConfig(path=str(path), field="QUESTIONS"))
    assert len(seeds) == 386 and skipped == 0
    kept, report = clean_items(
        [(str(i), s, "seed") for i, s in enumerate(seeds)], seeds, CleanStage(require_question=False)
    )
    assert report.removed.get("refusal_or_meta", 0) == 0  # first-person riddles are not refusals
    assert 380 <= len(kept) <= 386


def all_pairs_clean(items, cfg: CleanStage) -> list[str]:
    """The cleaning's duplicate rule by comparing every pair: an item goes when an earlier kept one has the same
    canonical text or a Jaccard similarity >= the threshold."""
    kept, keys, sets = [], set(), []
    for ident, text, _ in items:
        text = normalize_line(text)
        if _reason(text, cfg):
            continue
        key, sh = canonical(text), shingles(text)
        if key in keys or any(jaccard(sh, other) >= cfg.near_duplicate for other in sets):
            continue
        keys.add(key)
        sets.append(sh)
        kept.append(ident)
    return kept


def reworded_riddles() -> list[tuple[str, str, str]]:
    """The built-in riddles, each with three rewordings (words dropped, added or swapped): near-duplicates at every
    similarity from ~0.4 to 1."""
    path = Path(__file__).resolve().parents[1] / "src" / "phinetune" / "assets" / "riddles.jsonl"
    questions = [json.loads(line)["messages"][0]["content"] for line in path.read_text().splitlines()]
    rng, items = random.Random(7), []
    for i, question in enumerate(questions):
        items.append((f"{i:03d}-0", question, "synthetic"))
        for k in range(1, 4):
            words = question.split()
            for _ in range(k):
                j, op = rng.randrange(len(words)), rng.choice("dws")
                if op == "d" and len(words) > 3:
                    words.pop(j)
                elif op == "w":
                    words.insert(j, rng.choice(["really", "very", "the", "so"]))
                elif len(words) > 1:
                    words[j], words[j - 1] = words[j - 1], words[j]
            items.append((f"{i:03d}-{k}", " ".join(words), "synthetic"))
    rng.shuffle(items)
    return items


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.7, 0.8, 0.9])
def test_near_duplicates_are_those_an_all_pairs_comparison_finds(threshold):
    items, cfg = reworded_riddles(), CleanStage(near_duplicate=threshold, require_question=False)
    kept, report = clean_items(items, [], cfg)
    expected = all_pairs_clean(items, cfg)
    assert [k[0] for k in kept] == expected
    assert report.removed.get("near_duplicate", 0) > 0 and len(expected) < len(items)  # the corpus has near-duplicates
