"""`phinetune data inspect`: counts, histogram (PNG + text), shares trained/truncated, masked samples, duplicates."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import cli_here, realdata
from phinetune.config.schema import DataConfig
from phinetune.data.inspect import inspect_data, load_inspect_tokenizer, mask_plain, text_histogram, write_outputs

PHI3_TOKENIZER = ("phi3-mini-4k-instruct_tokenizer",)


@pytest.fixture(scope="module")
def tiny_tok():
    return load_inspect_tokenizer("tiny-phi3")


def test_counts_shares_duplicates_and_masks(tiny_tok, tmp_path):
    tokenizer, eot = tiny_tok
    rows = [
        {"prompt": "What has keys?", "completion": "A piano."},
        {"prompt": "Tell me more. " * 30, "completion": "No."},
        {"prompt": "What has keys?", "completion": "A piano."},
        {"prompt": "Why?", "completion": "Because it plays music and more music."},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ins = inspect_data(DataConfig(train=str(path), max_length=40), tokenizer, eot, n_samples=2)
    s = ins.summary()
    assert eot == "<|end|>" and s["records"] == 4 and s["format"] == "prompt_completion"
    assert ins.duplicates == [(f"{path}:3", f"{path}:1")]
    assert s["truncated_samples"] == 1 and s["truncated_share"] == 0.25 and s["empty_samples"] == [f"{path}:2"]
    assert s["tokens"] == sum(min(n, 40) for n in ins.lengths) and 0 < s["trained_share"] < 0.5
    assert "[[A piano.<|end|>]]" in mask_plain(ins.samples[0][1], tokenizer)
    assert "What has keys?" in mask_plain(ins.samples[0][1], tokenizer).split("[[")[0]
    assert any("no trained tokens" in w for w in ins.warnings)
    paths = write_outputs(ins, tokenizer, tmp_path / "out")
    assert paths["histogram_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["report"].read_text())["duplicate_pairs"] == [[f"{path}:3", f"{path}:1"]]
    assert "[[A piano.<|end|>]]" in paths["samples"].read_text()


def test_text_histogram_counts_every_sample():
    hist = text_histogram([5, 6, 50, 51, 52, 300], max_length=100, bins=6)
    counts = [
        int(line.split()[-1]) if not line.endswith("max_length") else int(line.split()[-3])
        for line in hist.splitlines()
    ]
    assert sum(counts) == 6
    assert hist.splitlines()[-1].endswith("> max_length")


def test_eot_is_read_off_the_real_phi3_template():
    from transformers import AutoTokenizer

    from phinetune.data.end_of_turn import end_of_turn
    from phinetune.models.specs import GENERIC

    tokenizer = AutoTokenizer.from_pretrained(str(realdata(*PHI3_TOKENIZER)))
    assert end_of_turn(tokenizer, GENERIC) == "<|end|>"  # no spec: read off the template's structure


@pytest.mark.parametrize(
    "name, model, kwargs, fmt",
    [
        (
            "openassistant-guanaco/openassistant_best_replies_eval.jsonl",
            "phi3",
            {"limit": 60, "max_length": 4096},
            "guanaco",
        ),
        ("huanhuan/huanhuan-100.json", "tiny-phi3", {}, "alpaca"),
        ("phi3cookbook_mlx/valid.jsonl", "phi3", {}, "text"),
        (
            "riddles_crawsome/riddles.csv",
            "phi3",
            {"columns": {"prompt": "QUESTIONS", "completion": "ANSWERS"}},
            "prompt_completion",
        ),
    ],
)
def test_real_files(name, model, kwargs, fmt, tmp_path):
    path = realdata("datasets", name)
    tokenizer, eot = load_inspect_tokenizer(str(realdata(*PHI3_TOKENIZER)) if model == "phi3" else model)
    ins = inspect_data(DataConfig(train=str(path), **kwargs), tokenizer, eot)
    assert ins.format == fmt and ins.records > 40 and ins.trained > 0
    if fmt != "text":
        assert ins.eot_trained > 0.95
        for rec, r in ins.samples:  # one trained span per assistant turn, each closed by the end-of-turn token
            answers = [m for m in rec.sample["messages"] if m["role"] == "assistant"]
            assert mask_plain(r, tokenizer).count("<|end|>]]") == len(answers) >= 1
    else:
        assert any("chat markup" in w for w in ins.warnings)  # the cookbook's text rows train the user turns too
    write_outputs(ins, tokenizer, tmp_path)


def test_cli_on_real_riddles_csv_with_phi3_tokenizer(tmp_path):
    csv = realdata("datasets", "riddles_crawsome", "riddles.csv")
    proc = cli_here(
        "data",
        "inspect",
        str(csv),
        "--model",
        str(realdata(*PHI3_TOKENIZER)),
        "--column",
        "prompt=QUESTIONS",
        "--column",
        "completion=ANSWERS",
        "--out",
        str(tmp_path / "out"),
        "--samples",
        "1",
    )
    out = " ".join(proc.stdout.split())
    assert "format: prompt_completion" in out and "records: 386" in out and "[[advice<|end|>]]" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["records"] == 386 and report["eot_trained_share"] == 1.0
    assert (tmp_path / "out" / "lengths.png").exists() and (tmp_path / "out" / "lengths.txt").read_text().strip()


def test_cli_bad_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from phinetune import cli

    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n')
    monkeypatch.setattr(
        sys, "argv", ["phinetune", "data", "inspect", str(path), "--model", "tiny-phi3", "--out", str(tmp_path / "o")]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = " ".join(capsys.readouterr().out.split())  # undo the console's line wrapping
    assert exit_info.value.code == 2
    assert out.startswith("error:") and f"{path}:2: missing field 'completion'" in out and "Traceback" not in out


def test_inspect_reports_the_pre_flight_per_turn_counts(tiny_tok, tmp_path):
    """Over the whole data set, `data inspect` and the pre-flight count turns and end-of-turn tokens alike."""
    from phinetune.config import load_config
    from phinetune.data.dataset import prepare_data
    from phinetune.models.specs import SPECS
    from phinetune.train.preflight import PreflightReport, eot_report

    tokenizer, eot = tiny_tok
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i} " * (1 + i % 5)},
                {"role": "assistant", "content": "d"},
                {"role": "user", "content": "and?"},
                {"role": "assistant", "content": "word " * (2 * i + 1)},
            ]
        }
        for i in range(16)
    ]
    path = tmp_path / "turns.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        [
            f"data.train={path}",
            "data.max_length=40",
            "data.cache=false",
            "data.eval_size=3",
            "preflight.min_eot_share=0",
        ],
    )
    ins = inspect_data(cfg.data, tokenizer, eot)
    report = PreflightReport()
    eot_report(tokenizer, SPECS["phi3-mini-4k"], cfg, prepare_data(cfg.data, tokenizer, eot), report)
    assert ins.summary()["end_of_turn"] == report.coverage
    assert report.coverage["turns"] == 32 and 0 < report.coverage["turns_cut_by_max_length"] < 16
    assert report.coverage["turns_eot_trained"] + report.coverage["turns_cut_by_max_length"] == 32
    out = cli_here(
        "data", "inspect", str(path), "--model", "tiny-phi3", "--max-length", "40", "--out", str(tmp_path / "out")
    ).stdout
    c = report.coverage
    assert (
        f"own token trained in {c['turns_eot_trained']}/32 assistant turns ({c['turns_cut_by_max_length']} cut by max_length); "
        f"last one kept in {c['last_eot_trained']}/16 chat samples; 0 mask violation(s)"
    ) in " ".join(out.split())


def test_errors_name_this_verbs_flags_not_config_keys(tmp_path):
    from typer.testing import CliRunner

    from phinetune.cli import app
    from phinetune.data.inspect import as_inspect_flags

    data = tmp_path / "d.jsonl"
    data.write_text('{"QUESTIONS": "2+2?", "ANSWERS": "4"}\n')
    result = CliRunner().invoke(
        app,
        [
            "data",
            "inspect",
            str(data),
            "--model",
            "tiny-phi3",
            "--column",
            "bogus=QUESTIONS",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    message = str(result.exception)
    assert "--column" in message and "data.columns" not in message, message
    assert (
        as_inspect_flags("set data.format, data.columns and data.skip_bad_rows (see phinetune.data.formats)")
        == "set --format, --column and --skip-bad-rows (see phinetune.data.formats)"
    )
