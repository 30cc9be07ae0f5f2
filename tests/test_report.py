"""The run report: sections from what the run folder holds, self-contained HTML, Markdown with plot files."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from phinetune.charts import CHARTS, render
from phinetune.report.page import write_report

ROOT = Path(__file__).resolve().parents[1]
METRICS = (
    [{"step": 0, "eval_loss": 6.9, "eval_ppl": 992.27}]
    + [
        {
            "step": s,
            "epoch": s / 4,
            "loss": 7.0 - 0.3 * s,
            "lr": 1e-3 * (1 - s / 4),
            "grad_norm": 1.0 + 0.1 * s,
            "tokens_per_s": 900.0 + s,
        }
        for s in range(1, 5)
    ]
    + [{"step": 4, "eval_loss": 5.9, "eval_ppl": 365.04}]
)


# The shape PreflightReport.to_json() writes (train/preflight.py).
PREFLIGHT = {
    "trainable": 1234,
    "total": 5678,
    "share_percent": 21.73,
    "eot_token": "<|end|>",
    "eot_trained": True,
    "eot_samples": [3, 3],
    "empty_samples": 0,
    "not_adapted": [],
    "problems": [],
    "dtype": {"dtype": "fp32", "reason": "no GPU", "quant": "none"},
    "layers": [{"layer_type": "layers.*.self_attn.qkv_proj", "kind": "lora", "count": 2, "trainable": 1234}],
    "sample": [["<|user|>\nHi<|end|>\n<|assistant|>\n", False], ["Hello.<|end|>", True], ["\n<|endoftext|>", False]],
}


def fake_run(tmp_path: Path, preflight: bool = True, eval_json: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps(
            {
                "base_model": "microsoft/Phi-3-mini-4k-instruct",
                "spec": "phi3-mini-4k",
                "method": "lora",
                "quant": "nf4",
                "dtype": "bf16",
                "status": "finished",
                "phinetune_version": "0.1.0",
            }
        )
    )
    (run / "config.yaml").write_text(
        "model:\n  name: microsoft/Phi-3-mini-4k-instruct\ntrain:\n  learning_rate: 0.0002  # <b>not bold</b>\n"
    )
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    if preflight:
        (run / "preflight.json").write_text(json.dumps(PREFLIGHT))
    if eval_json:
        rows = [
            {
                "task": "piqa",
                "metric": "acc",
                "n": 20,
                "base": 0.6,
                "tuned": 0.4,
                "delta": -0.2,
                "stderr": 0.09,
                "base_stderr": 0.1,
                "tuned_stderr": 0.1,
                "drop": True,
            },
            {
                "task": "arc_easy",
                "metric": "acc_norm",
                "n": 20,
                "base": 0.3,
                "tuned": 0.35,
                "delta": 0.05,
                "stderr": 0.05,
                "base_stderr": 0.1,
                "tuned_stderr": 0.1,
                "drop": False,
            },
        ]
        (run / "eval.json").write_text(
            json.dumps({"scorer": "phinetune", "shots": 0, "limit": 20, "data": "hub", "rows": rows})
        )
    (run / "compare.md").write_text("| prompt | base | tuned |\n|---|---|---|\n| 2+2? | 5 | 4 |\n")
    return run


def test_charts_render_only_what_was_logged():
    objective_only = {"rewards", "accuracy", "reward"}  # preference / GRPO curves: an SFT run logs none of them
    for chart in CHARTS:
        png = render(chart, METRICS)
        if chart.name in objective_only:
            assert png is None
        else:
            assert png is not None and png.startswith(b"\x89PNG")
    assert render(CHARTS[1], [{"step": 0, "eval_loss": 1.0}]) is None  # no learning rate logged: no empty chart


def test_report_html_is_self_contained_with_every_section(tmp_path):
    run = fake_run(tmp_path)
    html_path, md_path = write_report(str(run), samples=0)
    page = html_path.read_text()
    for title in (
        "Summary",
        "Config",
        "Pre-flight",
        "Training curves",
        "Benchmarks: base vs fine-tuned",
        "Sample answers: before vs after",
    ):
        assert f"<h2>{title}</h2>" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold</b>" not in page  # config text is escaped
    assert '<tr class="drop"><td>piqa</td>' in page and "DROP &gt; stderr" in page
    assert "6.9000 (992.27) at step 0 -&gt; 5.9000 (365.04) at step 4" in page
    assert "qkv_proj" in page and "2+2?" in page
    md = md_path.read_text()
    assert "![Loss (train and eval)](report_plots/loss.png)" in md and (run / "report_plots" / "loss.png").exists()
    assert "| piqa | acc | 20 | 0.6000 | 0.4000 | -0.2000 | 0.0900 | DROP > stderr |" in md


def test_preflight_section_shows_layers_and_marks_trained_tokens(tmp_path):
    run = fake_run(tmp_path)
    html_path, md_path = write_report(str(run), samples=0)
    page, md = html_path.read_text(), md_path.read_text()
    assert "layers.*.self_attn.qkv_proj" in page and "1,234 of 5,678 (21.73%)" in page
    assert (
        "<mark>Hello.&lt;|end|&gt;</mark>" in page and "Hi&lt;|end|&gt;" in page and "<mark>&lt;|user|&gt;" not in page
    )
    assert (
        "[[Hello.<|end|>]]" in md and "**" not in md.split("## Pre-flight")[1].split("## ")[0]
    )  # no bold inside a code block


def test_missing_preflight_and_eval_are_skipped(tmp_path):
    run = fake_run(tmp_path, preflight=False, eval_json=False)
    page = write_report(str(run), samples=0)[0].read_text()
    assert "Pre-flight" not in page and "Benchmarks" not in page and "Training curves" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    html_path, _ = write_report(str(fake_run(tmp_path)), samples=0)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [str(ROOT / "scripts" / "render_report.sh"), str(html_path), str(shot), "1000x2400"], check=True, timeout=120
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1000, 2400)
    # the plots drew: matplotlib's default blue line (#1f77b4) appears in the rendered page
    assert any(abs(r - 31) < 20 and abs(g - 119) < 20 and abs(b - 180) < 20 for r, g, b in img.getdata())


def test_compare_markdown_is_rendered_as_a_table(tmp_path):
    run = fake_run(tmp_path)
    (run / "compare.md").write_text(
        "# Base vs fine-tuned: `r`\n\n| # | prompt | base | fine-tuned |\n|---|---|---|---|\n"
        "| 1 | a \\| b | one<br>two | <b>x</b> |\n"
    )
    page = write_report(str(run), samples=0)[0].read_text()
    assert "<th>prompt</th><th>base</th><th>fine-tuned</th>" in page
    assert "<td>a | b</td><td>one<br>two</td><td>&lt;b&gt;x&lt;/b&gt;</td>" in page  # cell text still escaped
    assert "| # | prompt |" not in page  # no raw Markdown block


def _md_tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table in md as rows of cells (header first, the --- line left out)."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_benchmark_table_has_a_header_for_every_column(tmp_path):
    run = fake_run(tmp_path)
    html_path, md_path = write_report(str(run), samples=0)
    md, page = md_path.read_text(), html_path.read_text()
    bench = next(t for t in _md_tables(md) if t[0][0] == "task")
    assert bench[0] == ["task", "metric", "n", "base", "tuned", "delta", "stderr (paired)", "flag"]
    assert all(len(row) == len(bench[0]) for row in bench) and bench[1][-1] == "DROP > stderr" and bench[2][-1] == ""
    assert "<th></th>" not in page
    # nothing fell: no flag column at all
    report = json.loads((run / "eval.json").read_text())
    report["rows"] = [r | {"drop": False} for r in report["rows"]]
    (run / "eval.json").write_text(json.dumps(report))
    md = write_report(str(run), samples=0)[1].read_text()
    assert next(t for t in _md_tables(md) if t[0][0] == "task")[0] == [
        "task",
        "metric",
        "n",
        "base",
        "tuned",
        "delta",
        "stderr (paired)",
    ]


def test_held_out_prompts_are_shown_once(tmp_path):
    """The report's held-out answers (RUN/samples.json) appear as one set of conversations, not also as a table."""
    run = fake_run(tmp_path)
    (run / "compare.md").unlink()
    data = tmp_path / "riddles.jsonl"
    convs = [
        [{"role": "user", "content": f"Riddle {k}?"}, {"role": "assistant", "content": f"Answer {k}."}]
        for k in range(6)
    ]
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    (run / "config.yaml").write_text(f"model:\n  name: tiny-phi3\ndata:\n  train: {data}\n  eval_size: 2\n")
    from phinetune.runs.held_out import held_out_prompts
    from phinetune.runs.run_dir import RunDir

    held = held_out_prompts(RunDir(run), 2)
    assert len(held) == 2
    (run / "samples.json").write_text(
        json.dumps(
            [
                {"prompt": conv[-1]["content"], "reference": ref, "base": "piano piano", "tuned": f"tuned answer {k}"}
                for k, (conv, ref) in enumerate(held)
            ]
        )
    )
    html_path, md_path = write_report(str(run), samples=0)
    md, page = md_path.read_text(), html_path.read_text()
    for conv, ref in held:
        assert md.count(conv[-1]["content"]) == 1 and md.count(ref) == 1, md
    assert "Sample answers" not in page and page.count("<div class=convo>") == 2
    assert "**held-out answer:** " + held[0][1] in md and "**fine-tuned:** tuned answer 0" in md
