"""data/prompts.py: prompt files (generate --input, compare/judge --prompts) read in one place, bad lines named."""

from __future__ import annotations

import json

import pytest

from phinetune.data.prompts import read_prompt_rows
from phinetune.errors import DataError


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_a_prompt_becomes_one_user_message_and_other_fields_are_kept(tmp_path):
    rows = read_prompt_rows(
        _write(
            tmp_path / "in.jsonl",
            [
                {"id": 1, "prompt": "What has keys?", "reference": "A piano."},
                "",
                {"messages": [{"role": "user", "content": "Hi"}]},
            ],
        )
    )
    assert rows == [
        {
            "id": 1,
            "prompt": "What has keys?",
            "reference": "A piano.",
            "messages": [{"role": "user", "content": "What has keys?"}],
        },
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]


@pytest.mark.parametrize(
    "line,match",
    [
        ("{not json", r"in.jsonl:2: not JSON \(Expecting property name"),
        ('{"text": "x"}', r"in.jsonl:2: an object with 'text'; expected one JSON object per line"),
        ('{"messages": [{"role": "user"}]}', r"in.jsonl:2: an object with 'messages'; expected"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, match):
    with pytest.raises(DataError, match=match):
        read_prompt_rows(_write(tmp_path / "in.jsonl", [{"prompt": "ok"}, line]))


def test_a_byte_order_mark_in_the_input_is_accepted(tmp_path):
    rows = [{"prompt": "What has keys?"}, {"messages": [{"role": "user", "content": "Hi"}]}]
    plain = _write(tmp_path / "plain.jsonl", rows)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_prompt_rows(bom) == read_prompt_rows(plain)


def test_missing_and_empty_files_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"^prompt file .*nothing.jsonl does not exist$"):
        read_prompt_rows(tmp_path / "nothing.jsonl")
    with pytest.raises(DataError, match=r"holds no prompts; expected one JSON object per line"):
        read_prompt_rows(_write(tmp_path / "empty.jsonl", [""]))
