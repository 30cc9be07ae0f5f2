"""Eval task loaders: official file formats -> Docs with lm-eval's prompts."""

from __future__ import annotations

import json

import pytest

from conftest import realdata
from phinetune.errors import DataError, PhinetuneError
from phinetune.eval.tasks import TASKS, docs_from_file, hellaswag_preprocess, load_docs, parse_tasks, read_records


def test_arc_official_and_hub_rows_give_the_same_doc():
    path = realdata("evalsets", "arc_easy", "ARC-Easy-Test.jsonl")
    raw = read_records(path)[:30]
    docs = [TASKS["arc_easy"].parse(r) for r in raw]
    hub = [
        {
            "question": r["question"]["stem"],
            "answerKey": r["answerKey"],
            "choices": {
                "text": [c["text"] for c in r["question"]["choices"]],
                "label": [c["label"] for c in r["question"]["choices"]],
            },
        }
        for r in raw
    ]
    assert [TASKS["arc_easy"].parse(r) for r in hub] == docs
    d = docs[0]
    assert d.contexts[0] == f"Question: {raw[0]['question']['stem']}\nAnswer:"
    assert set(d.contexts) == {d.contexts[0]} and len(d.continuations) == len(raw[0]["question"]["choices"])
    assert d.continuations[d.gold] == next(
        c["text"] for c in raw[0]["question"]["choices"] if c["label"] == raw[0]["answerKey"]
    )
    assert d.norm_lengths == tuple(len(c) for c in d.continuations)


def test_piqa_labels_come_from_the_aligned_lst_file():
    path = realdata("evalsets", "piqa", "valid.jsonl")
    labels = path.with_name("valid-labels.lst").read_text().split()
    docs = docs_from_file(TASKS["piqa"], path)
    assert len(docs) == len(labels) == 1838
    assert [d.gold for d in docs[:40]] == [int(x) for x in labels[:40]]
    first = json.loads(path.read_text().splitlines()[0])
    assert docs[0].contexts[0] == f"Question: {first['goal']}\nAnswer:" and docs[0].continuations == (
        first["sol1"],
        first["sol2"],
    )


def test_piqa_misaligned_labels_are_refused(tmp_path):
    (tmp_path / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 3)
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 3 rows"):
        load_docs(TASKS["piqa"], tmp_path)


def test_hellaswag_preprocess_and_ctx_split():
    assert hellaswag_preprocess(" How to cook [title] Boil water. [step] Stir.  ") == "How to cook. Boil water. Stir."
    official = {
        "activity_label": "Canoeing",
        "ctx_a": "Two people paddle.",
        "ctx_b": "they",
        "endings": ["a [step] b", "c", "d", "e"],
        "label": "2",
    }
    d = TASKS["hellaswag"].parse(official)
    assert d.contexts[0] == "Canoeing: Two people paddle. They" and d.continuations[0] == "a b" and d.gold == 2
    docs = load_docs(TASKS["hellaswag"], realdata("evalsets", "hellaswag"))
    assert (
        len(docs) == 10042
        and docs[0].contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"
        and docs[0].gold == 3
    )


def test_winogrande_partial_scoring_and_csv_equals_jsonl():
    d = TASKS["winogrande"].parse(
        {
            "sentence": "Sarah was better than Maria so _ got the easier cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "2",
        }
    )
    assert d.contexts == ("Sarah was better than Maria so Sarah", "Sarah was better than Maria so Maria")
    assert d.continuations == ("got the easier cases.",) * 2 and d.gold == 1
    assert d.shot == "Sarah was better than Maria so Maria got the easier cases."
    folder = realdata("evalsets", "winogrande")
    from_jsonl = docs_from_file(TASKS["winogrande"], folder / "winogrande_1.1" / "dev.jsonl")
    from_csv = docs_from_file(TASKS["winogrande"], folder / "winogrande_dev_with_preds.csv")
    assert len(from_jsonl) == 1267 and from_csv == from_jsonl  # the summary line of the CSV is not an item


def test_local_lookup_finds_eval_and_fewshot_files():
    root = realdata("evalsets")
    assert len(load_docs(TASKS["arc_easy"], root)) == 2376
    assert len(load_docs(TASKS["arc_easy"], root, fewshot=True)) == 2251
    assert (
        load_docs(TASKS["piqa"], root, fewshot=True) == []
    )  # no train.jsonl here: few-shot falls back to the eval split


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(PhinetuneError, match="unknown eval task 'arc_eazy'"):
        parse_tasks("arc_eazy,piqa")
    assert [t.name for t in parse_tasks("piqa, arc_easy,piqa")] == ["piqa", "arc_easy"]
    with pytest.raises(DataError, match="no arc_challenge file under"):
        load_docs(TASKS["arc_challenge"], tmp_path)
    (tmp_path / "ARC-Easy-Test.jsonl").write_text('{"question": {"stem": "q", "choices": []}, "answerKey": "A"}\n')
    with pytest.raises(DataError, match="ARC-Easy-Test.jsonl: item 1: not a arc_easy record"):
        load_docs(TASKS["arc_easy"], tmp_path)
    (tmp_path / "dev.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="dev.jsonl:1: invalid JSON"):
        load_docs(TASKS["winogrande"], tmp_path)
