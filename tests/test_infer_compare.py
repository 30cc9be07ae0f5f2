"""infer/compare.py and `phinetune compare`: base vs fine-tuned side by side, from the same loaded weights."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from phinetune.cli import app
from phinetune.infer.compare import compare_run, default_prompts
from phinetune.infer.complete import Sampling, generate_batch
from phinetune.models.load_options import LoadOptions
from phinetune.runs.folders import open_run
from phinetune.runs.loading import load_for_inference


def test_base_column_is_the_base_model_and_tuned_column_the_adapter(tiny_run, tmp_path):
    out = tmp_path / "cmp.md"
    rows = compare_run(str(tiny_run), n=3, sampling=Sampling(max_new_tokens=8), load=LoadOptions("fp32"), out=out)
    assert len(rows) == 3 and all(r.reference for r in rows)
    convs = [r.prompt for r in rows]
    base = load_for_inference(str(tiny_run), "fp32", adapter=False)
    assert [r.base for r in rows] == generate_batch(base, convs, Sampling(max_new_tokens=8))
    tuned = load_for_inference(str(tiny_run), "fp32")
    assert [r.tuned for r in rows] == generate_batch(tuned, convs, Sampling(max_new_tokens=8))
    assert [r.base for r in rows] != [r.tuned for r in rows]  # 4 steps of training changed the answers
    md = out.read_text()
    assert md.count("\n| ") == 4 and "| # | prompt | reference | base | fine-tuned |" in md


def test_default_prompts_end_before_the_last_answer_of_the_eval_split(tiny_run):
    pairs = default_prompts(open_run(tiny_run), 10)
    assert len(pairs) == 4  # data.eval_size=4
    for prompt, reference in pairs:  # the riddles are two-turn: the prompt holds the first exchange
        assert [m["role"] for m in prompt] == ["user", "assistant", "user"] and reference


def test_cli_compare_with_a_prompts_file(tiny_run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "What has keys but cannot open locks?", "reference": "A piano."}) + "\n")
    proc = CliRunner().invoke(
        app,
        ["compare", str(tiny_run), "--prompts", str(prompts), "--max-new-tokens", "6", "--out", str(tmp_path / "c.md")],
        env={"COLUMNS": "200"},
    )
    assert proc.exit_code == 0, proc.output
    assert "base vs fine-tuned" in proc.output and "What has keys but cannot open locks?" in proc.output
    assert "A piano." in (tmp_path / "c.md").read_text()
