"""infer/generate.py and `phinetune generate`: JSONL in -> JSONL out, in order, with clear errors for bad lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import cli_here
from phinetune.cli import app
from phinetune.data.prompts import PROMPT_LINES
from phinetune.errors import PhinetuneError
from phinetune.infer.complete import Sampling
from phinetune.infer.generate import run_generate
from phinetune.models.load_options import LoadOptions

FP32 = LoadOptions("fp32")


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_in_jsonl_out_keeps_order_and_fields(tiny_run, tmp_path):
    rows = [
        {"id": "a", "prompt": "What has keys?"},
        {"id": "b", "messages": [{"role": "user", "content": "Hi"}]},
        {"id": "c", "prompt": "What gets wetter the more it dries?"},
    ]
    out = tmp_path / "out" / "answers.jsonl"
    answers = run_generate("tiny-phi3", None, _write(tmp_path / "in.jsonl", rows), out, Sampling(6), 2, FP32)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", "b", "c"] and [g["response"] for g in got] == answers
    assert all(g["finish_reason"] in ("stop", "length") and 1 <= g["completion_tokens"] <= 6 for g in got)
    assert got[0]["messages"] == [{"role": "user", "content": "What has keys?"}]
    # batch size must not change greedy answers
    again = run_generate("tiny-phi3", None, tmp_path / "in.jsonl", None, Sampling(6), 1, FP32)
    assert again == answers


def test_prompt_xor_input(tmp_path):
    with pytest.raises(PhinetuneError, match="exactly one"):
        run_generate("tiny-phi3", "hi", tmp_path / "x.jsonl", None, Sampling(4), 1, FP32)
    with pytest.raises(PhinetuneError, match="temperature"):
        run_generate("tiny-phi3", "hi", None, None, Sampling(4, -1.0), 1, FP32)


def test_cli_generate_on_a_run_folder(tiny_run, tmp_path):
    """The verb's wiring, in-process (a subprocess would spend seconds importing torch again)."""
    src = _write(tmp_path / "in.jsonl", [{"prompt": "What has keys?"}, {"prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    args = [
        "generate",
        str(tiny_run),
        "--input",
        str(src),
        "--output",
        str(out),
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "1",
        "--batch-size",
        "2",
    ]
    first = CliRunner().invoke(app, [*args, "--dtype", "bf16"])
    assert first.exit_code == 0, first.output
    sampled = out.read_text()
    assert len(sampled.splitlines()) == 2 and "2 answers written" in first.output
    assert CliRunner().invoke(app, [*args, "--dtype", "bf16"]).exit_code == 0 and out.read_text() == sampled  # seeded
    one = CliRunner().invoke(
        app, ["generate", str(tiny_run), "What has keys?", "--max-new-tokens", "3", "--quant", "nf4"]
    )
    assert one.exit_code == 0, one.output
    bad = CliRunner().invoke(app, ["generate", str(tiny_run), "hi", "--top-p", "1.5"])
    assert isinstance(bad.exception, PhinetuneError) and "top_p must be in (0, 1]" in str(bad.exception)


def test_stdout_holds_only_the_answer(tiny_run):
    """`phinetune generate RUN "..." > answer.txt` captures the answer alone: bars, spinners and library
    noise (bitsandbytes' kernels-community line, FutureWarnings, weight-loading bars) stay off stdout, and
    the library noise off stderr too unless --verbose."""
    import os
    import subprocess
    import sys

    from conftest import SRC
    from phinetune.infer.complete import Sampling, generate_batch
    from phinetune.runs.loading import load_for_inference

    prompt = "What has keys but can't open a single lock?"
    env = {k: v for k, v in os.environ.items() if k != "PHINETUNE_QUIET"}  # progress bars on, as for a user
    proc = subprocess.run(
        [sys.executable, "-m", "phinetune", "generate", str(tiny_run), prompt, "--max-new-tokens", "40"],
        env={**env, "PYTHONPATH": str(SRC), "COLUMNS": "60"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    expected = generate_batch(
        load_for_inference(str(tiny_run)), [[{"role": "user", "content": prompt}]], Sampling(max_new_tokens=40)
    )[0]
    assert proc.stdout == expected + "\n"  # whole: not wrapped at the 60 columns either
    assert "Generating" in proc.stderr  # the bar is there, on stderr
    for noise in ("gemm_4bit_forward", "kernels-community", "FutureWarning", "Loading weights", "Traceback"):
        assert noise not in proc.stderr, noise


def test_bad_sampling_setting_names_the_flag_value_only():
    from phinetune.infer.complete import Sampling

    with pytest.raises(PhinetuneError, match=r"^temperature must be >= 0 \(0 = greedy\) \(got -1.0\)$"):
        Sampling(temperature=-1.0)


@pytest.mark.parametrize(
    "text,what",
    [
        ("What has keys?\nWho am I?\n", "in.txt:1: not JSON (Expecting value at column 1)"),
        ('[{"prompt": "What has keys?"}]\n', "in.txt:1: a JSON array, not JSON Lines"),
        ('[\n  {"prompt": "What has keys?"}\n]\n', "in.txt:1: a JSON array, not JSON Lines"),
        ('"What has keys?"\n', "in.txt:1: a JSON string"),
    ],
)
def test_an_input_that_is_not_json_lines_says_the_line_and_the_shape_expected(tmp_path, text, what):
    """Plain text or a JSON array given to --input: the line, what it is, and an example of what a line should be."""
    (tmp_path / "in.txt").write_text(text)
    proc = cli_here("generate", "tiny-phi3", "--input", "in.txt", cwd=tmp_path, check=False)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and f"error: {what}; expected {PROMPT_LINES}" in out, out
    assert "Traceback" not in proc.stdout + proc.stderr


def test_output_naming_the_input_file_is_refused_under_any_spelling(tmp_path):
    """The same file as ./in.jsonl, an absolute path, or a link to it: refused before any model is loaded."""
    prompts = _write(tmp_path / "in.jsonl", [{"prompt": "What has keys?"}])
    before = prompts.read_text()
    (tmp_path / "link.jsonl").symlink_to(prompts)
    (tmp_path / "sub").mkdir()
    for output in ("in.jsonl", "./in.jsonl", str(prompts), "link.jsonl", "sub/../in.jsonl"):
        proc = cli_here("generate", "tiny-phi3", "--input", "in.jsonl", "--output", output, cwd=tmp_path, check=False)
        out = " ".join(proc.stdout.split())
        assert proc.returncode == 2 and f"--output {Path(output)} is the --input file in.jsonl" in out, out
        assert prompts.read_text() == before
    with pytest.raises(PhinetuneError, match="would replace the prompts"):  # the library refuses too, not only the CLI
        run_generate("tiny-phi3", None, prompts, tmp_path / "link.jsonl", Sampling(4), 1, FP32)


def test_dtype_spellings_on_the_command_line(tiny_run):
    """`--dtype float32` is `--dtype fp32` (the same answer), in any case; a name that is no dtype is the command line's
    one-line error listing every spelling."""
    from conftest import cli_here

    args = ["generate", str(tiny_run), "What has keys?", "--max-new-tokens", "6"]
    assert cli_here(*args, "--dtype", "float32").stdout == cli_here(*args, "--dtype", "FP32").stdout
    bad = cli_here(*args, "--dtype", "bfloat17", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    said = " ".join(bad.stderr.split())
    assert (
        "Invalid value for '--dtype'" in said
        and (
            "'bfloat17' is not one of 'auto', 'bf16', 'bfloat16', 'fp16', 'float16', 'half', 'fp32', 'float32', 'float'"
        )
        in said
    ), said
