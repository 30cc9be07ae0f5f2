"""The journal: answers survive reopening; a torn last line from a kill is cut off; corruption elsewhere is an error."""

import json

import pytest

from phinetune.errors import DataError
from phinetune.teachers.journal import Entry, Journal, call_hash, call_key


def test_keys_depend_on_everything_sent():
    a = call_hash({"messages": [{"role": "user", "content": "hi"}], "t": 0.7})
    assert a == call_hash({"t": 0.7, "messages": [{"role": "user", "content": "hi"}]})  # key order does not matter
    assert a != call_hash({"messages": [{"role": "user", "content": "hi!"}], "t": 0.7})
    assert call_key("answer", "seed-00001", 0, a) == f"answer/seed-00001/0/{a}"


def test_entries_survive_reopening(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append(Entry("k1", "first", 3, 4, 0.5, "stop", {"response_id": "r1"}))
        j.append(Entry("k2", "second"))
    with Journal(path) as j:
        assert "k1" in j and "k2" in j and "k3" not in j
        e = j.get("k1")
        assert (e.text, e.prompt_tokens, e.completion_tokens, e.cost, e.extra) == (
            "first",
            3,
            4,
            0.5,
            {"response_id": "r1"},
        )


def test_torn_last_line_is_cut_and_appends_stay_valid(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append(Entry("k1", "done"))
    with path.open("ab") as fh:
        fh.write(b'{"key": "k2", "text": "half writ')  # what a SIGKILL mid-write leaves
    with Journal(path) as j:
        assert j.recovered_torn_line and "k2" not in j
        j.append(Entry("k3", "after"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["k1", "k3"]


def test_corrupt_line_in_the_middle_names_the_line(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "text": "x"}\nnot json\n{"key": "b", "text": "y"}\n')
    with pytest.raises(DataError, match=r"j.jsonl:2: corrupt journal line"):
        Journal(path)
