"""End to end on a tiny run: `phinetune eval` prints the before/after table and saves eval.json; `phinetune report` writes the page."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, cli_here

pytestmark = pytest.mark.slow
EVALSETS = ROOT / "tests" / "fixtures" / "evalsets"  # the first items of each official eval file


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    cli_here(
        "train",
        "model.name=tiny-phi3",
        "data.train=builtin:riddles",
        "data.eval_size=4",
        "data.limit=24",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.eval_every=2",
        "train.log_every=1",
        "train.learning_rate=3e-3",
        "train.recall_check=0",
        f"output.dir={out}",
    )
    return out


def test_eval_prints_base_vs_tuned_table_and_saves_json(tiny_run):
    proc = cli_here(
        "eval",
        str(tiny_run),
        "--tasks",
        "arc_easy,piqa,winogrande,hellaswag",
        "--limit",
        "6",
        "--shots",
        "0",
        "--data-dir",
        str(EVALSETS),
    )
    for task in ("arc_easy", "piqa", "winogrande", "hellaswag"):
        assert task in proc.stdout
    assert "base vs fine-tuned" in proc.stdout and "delta" in proc.stdout
    saved = json.loads((tiny_run / "eval.json").read_text())
    assert [(r["task"], r["metric"]) for r in saved["rows"]] == [
        ("arc_easy", "acc"),
        ("arc_easy", "acc_norm"),
        ("piqa", "acc"),
        ("piqa", "acc_norm"),
        ("winogrande", "acc"),
        ("hellaswag", "acc"),
        ("hellaswag", "acc_norm"),
    ]
    for r in saved["rows"]:
        assert (
            r["n"] == 6
            and r["delta"] == pytest.approx(r["tuned"] - r["base"])
            and r["drop"] == (r["delta"] < -r["stderr"] - 1e-9)
        )
    # the adapter changed the model: some per-option log-likelihood differs between base and tuned
    assert saved["base"]["piqa"]["items"] != saved["tuned"]["piqa"]["items"]


def test_eval_bad_task_is_one_line_error(tiny_run):
    proc = cli_here("eval", str(tiny_run), "--tasks", "mmlu", check=False)
    assert proc.returncode == 2 and "unknown eval task 'mmlu'" in proc.stdout and "Traceback" not in proc.stderr


def test_report_writes_page_with_samples(tiny_run):
    proc = cli_here("report", str(tiny_run), "--samples", "2")
    assert "report.html" in proc.stdout
    page = (tiny_run / "report.html").read_text()
    # the held-out answers are shown once, as conversations ("Sample answers" is the table of `phinetune compare`)
    assert page.count("data:image/png;base64,") == 4 and "Conversations: base vs fine-tuned" in page
    assert "Sample answers: before vs after" not in page
    samples = json.loads((tiny_run / "samples.json").read_text())
    assert len(samples) == 2 and all({"prompt", "reference", "base", "tuned"} <= set(s) for s in samples)
