"""Readers: every bad file gets one sentence naming file:line and the field; skipping is summarised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phinetune.data import readers
from phinetune.data.readers import ReadReport, read_records
from phinetune.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
ALPACA = {"instruction": "Say hi.", "input": "", "output": "Hi."}


def jsonl(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def error_of(path: Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        read_records(str(path), **kw)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


BAD_FILES = {
    # name: (rows, expected where, expected words)
    "invalid_json": ([GOOD, '{"messages": [}'], ":2:", ["invalid JSON", "column"]),
    "wrong_type": (
        [GOOD, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}],
        ":2:",
        ["messages[0]", "content: str"],
    ),
    "wrong_type_alpaca": (
        [ALPACA, {"instruction": "Add.", "input": "", "output": 42}],
        ":2:",
        ["field 'output'", "string, got int"],
    ),
    "missing_field": ([ALPACA, ALPACA, {"instruction": "No answer", "input": ""}], ":3:", ["missing field 'output'"]),
    "empty_conversation": ([GOOD, {"messages": []}], ":2:", ["field 'messages'", "empty conversation"]),
    "two_user_turns": (
        [
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        ],
        ":1:",
        ["field 'messages[1]'", "user turn but an assistant turn was expected"],
    ),
    "ends_on_user": (
        [
            GOOD,
            GOOD,
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
        ],
        ":3:",
        ["field 'messages'", "must end with an assistant turn"],
    ),
    "sharegpt_bad_speaker": (
        [{"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}],
        ":1:",
        ["conversations[1]", "human|gpt|system"],
    ),
    "guanaco_no_markers": (
        [{"text": "### Human: hi### Assistant: yo"}, {"text": "just words"}],
        ":2:",
        ["field 'text'", "### Human:"],
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_rows_name_file_line_and_field(tmp_path, name):
    rows, where, words = BAD_FILES[name]
    path = jsonl(tmp_path / f"{name}.jsonl", *rows)
    msg = error_of(path)
    assert msg.startswith(f"{path}{where}"), msg
    for w in words:
        assert w in msg, msg


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}:2:") and "not valid UTF-8" in msg and "0xe9" in msg


def test_non_utf8_in_json_array_names_the_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n  {"text": "ok"},\n  {"text": "caf\xe9"}\n]')
    assert error_of(path).startswith(f"{path}:3: not valid UTF-8")


def test_enormous_line_is_refused_with_the_limit_stated(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w") as fh:
        fh.write(json.dumps(GOOD) + "\n")
        fh.write('{"text": "' + "x" * (readers.MAX_LINE_BYTES + 10) + '"}\n')
    msg = error_of(path)
    assert msg.startswith(f"{path}:2:") and "16 MiB" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert error_of(path) == f"{path}: the file is empty (0 bytes); expected records"


def test_blank_lines_only(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n\n  \n")
    assert "no usable records" in error_of(path)


def test_json_array_records_are_named_by_their_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([ALPACA, ALPACA, {"instruction": "x", "input": ""}], indent=2))
    msg = error_of(path)
    assert msg.startswith(f"{path}:12:") and "missing field 'output'" in msg  # 5 lines per record, starting at line 2
    records = read_records(str(path), skip_bad=True)
    assert [r.where for r in records] == [f"{path}:2", f"{path}:7"]


def test_csv_empty_cell_and_column_mapping(tmp_path):
    path = tmp_path / "riddles.csv"
    path.write_text('QUESTIONS,ANSWERS\n"What goes up, never down?",age\nWhat has keys?,\n')
    cols = {"prompt": "QUESTIONS", "completion": "ANSWERS"}
    msg = error_of(path, columns=cols)
    assert msg.startswith(f"{path}:row 2:") and "field 'completion' is empty" in msg
    [rec] = read_records(str(path), columns=cols, skip_bad=True)
    assert rec.sample["messages"][1] == {"role": "assistant", "content": "age"}
    assert "cannot tell the data format" in error_of(path)  # without the mapping the format is unknown
    assert "data.columns: 'question'" in error_of(path, columns={"question": "QUESTIONS"})


def test_parquet_and_folder(tmp_path):
    import pandas as pd

    folder = tmp_path / "set"
    folder.mkdir()
    pd.DataFrame({"prompt": ["a?", "b?"], "completion": ["A.", "B."]}).to_parquet(folder / "part1.parquet")
    jsonl(folder / "part2.jsonl", {"prompt": "c?", "completion": "C."})
    records = read_records(str(folder))
    assert [r.sample["messages"][1]["content"] for r in records] == ["A.", "B.", "C."]
    assert records[1].where == f"{folder / 'part1.parquet'}:row 2"


def test_skip_bad_rows_summarises_every_reason(tmp_path):
    path = jsonl(
        tmp_path / "mixed.jsonl",
        GOOD,
        "{oops",
        {"messages": []},
        GOOD,
        "[1, 2]",
        {"messages": [{"role": "user", "content": "q"}]},
        "{bad",
    )
    report = ReadReport()
    records = read_records(str(path), skip_bad=True, report=report)
    assert len(records) == 2 and report.read == 2 and len(report.skipped) == 5
    summary = report.summary()
    assert summary.startswith("skipped 5 bad row(s): invalid JSON x2")
    for text in (
        f"{path}:2",
        f"{path}:7",
        f"empty conversation x1 ({path}:3)",
        f"not a JSON object x1 ({path}:5)",
        f"ends on a user turn x1 ({path}:6)",
    ):
        assert text in summary, summary


def test_nothing_usable_says_why(tmp_path):
    path = jsonl(tmp_path / "allbad.jsonl", "{", "{")
    msg = error_of(path, skip_bad=True)
    assert "no usable records" in msg and "invalid JSON x2" in msg


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nope.jsonl")


def test_hub_code_path_through_datasets_load_dataset(tmp_path):
    """`hf:` sends a source to datasets.load_dataset; offline, a local folder exercises the same call."""
    folder = tmp_path / "hubish"
    folder.mkdir()
    jsonl(folder / "train.jsonl", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    jsonl(
        folder / "test.jsonl",
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "a"},
                {"from": "gpt", "value": "b"},
            ]
        },
    )
    [rec] = read_records(f"hf:{folder}", split="train")
    assert rec.where == f"{folder}[train]:row 1"
    assert rec.sample["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    [rec] = read_records(f"hf:{folder}", split="test")
    assert [m["role"] for m in rec.sample["messages"]] == ["system", "user", "assistant"]
    assert "could not load it (split 'validation')" in error_of(f"hf:{folder}", split="validation")


def test_unknown_hub_id_offline_is_one_sentence():
    msg = error_of("nobody-xyz/no-such-dataset-123")
    assert msg.startswith("data source 'nobody-xyz/no-such-dataset-123' is not a local file or folder")


def test_saved_dataset_folder(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])}).save_to_disk(
        str(tmp_path / "saved")
    )
    [rec] = read_records(str(tmp_path / "saved"))
    assert rec.sample["messages"][0]["content"] == "p"
    assert "no split 'eval'" in error_of(tmp_path / "saved", split="eval")


def test_json_file_with_one_wrapping_object(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": [ALPACA]}, indent=2))
    msg = error_of(path)
    assert msg.startswith(f"{path}: holds one JSON object") and "under 'data'" in msg


def test_json_lines_saved_as_json(tmp_path):
    path = jsonl(tmp_path / "lines.json", ALPACA, ALPACA)
    assert [r.where for r in read_records(str(path))] == [f"{path}:1", f"{path}:2"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_byte_order_mark_is_accepted(tmp_path, suffix):
    """Files saved by Windows editors start with a UTF-8 byte-order mark; json.loads refuses it, so the readers drop it."""
    path = tmp_path / f"bom{suffix}"
    rows = [GOOD, {"messages": [{"role": "user", "content": "Second?"}, {"role": "assistant", "content": "Yes."}]}]
    if suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif suffix == ".json":
        text = json.dumps(rows, indent=1)
    else:
        rows = [{"prompt": "Hi?", "completion": "Hello."}, {"prompt": "Second?", "completion": "Yes."}]
        text = "prompt,completion\nHi?,Hello.\nSecond?,Yes.\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    plain = tmp_path / f"plain{suffix}"
    plain.write_text(text)
    assert [r.sample for r in read_records(str(path))] == [r.sample for r in read_records(str(plain))]
    assert len(read_records(str(path))) == 2


def test_an_unknown_builtin_lists_the_bundled_names_and_the_one_meant():
    msg = error_of(Path("builtin:ridles"))
    assert msg == (
        "builtin:ridles: no such bundled dataset; did you mean builtin:riddles? the bundled ones are builtin:riddles, "
        "builtin:riddles_preferences, builtin:riddles_qa"
    )
    assert "assets" not in error_of(
        Path("builtin:../default")
    )  # no path into the package, no file outside the data sets
    with pytest.raises(DataError, match="did you mean builtin:riddles"):
        readers.content_fingerprint("builtin:ridles")  # the tokenized-data cache's key, read first by train
