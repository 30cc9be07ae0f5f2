"""The report's before/after page: regressions flagged, the judge's win rate, checkpoint curves and conversations as chat,
checked in headless Chromium (screenshot kept in tests/artifacts/)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from phinetune.report.page import write_report
from phinetune.report.sections import light_markdown
from phinetune.runs.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CONVS = [
    [
        {"role": "user", "content": f"Riddle {k}: what has keys but opens no locks?"},
        {"role": "assistant", "content": "A piano."},
        {"role": "user", "content": f"Why a piano, question {k}?"},
    ]
    for k in range(4)
]


def before_after_run(tmp_path: Path) -> RunDir:
    from phinetune.eval.checkpoints import plot_scores

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.info_file.write_text(
        json.dumps(
            {
                "base_model": "tiny",
                "spec": "phi3-mini-4k",
                "method": "lora",
                "quant": "none",
                "dtype": "fp32",
                "status": "finished",
                "phinetune_version": "0.1.0",
            }
        )
    )
    run.config.write_text("model:\n  name: tiny-phi3\n")
    metrics = (
        [{"step": 0, "eval_loss": 6.0}]
        + [{"step": s, "loss": 6.0 - s} for s in range(1, 5)]
        + [{"step": 4, "eval_loss": 4.5}]
    )
    run.metrics.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    rows = [
        {
            "task": "piqa",
            "metric": "acc",
            "n": 20,
            "base": 0.6,
            "tuned": 0.4,
            "delta": -0.2,
            "stderr": 0.09,
            "drop": True,
        },
        # a fall within its paired standard error: not a regression
        {
            "task": "arc_easy",
            "metric": "acc",
            "n": 20,
            "base": 0.35,
            "tuned": 0.3,
            "delta": -0.05,
            "stderr": 0.08,
            "drop": False,
        },
    ]
    run.eval_report.write_text(
        json.dumps(
            {
                "scorer": "phinetune",
                "shots": 0,
                "limit": 20,
                "data": "hub",
                "rows": rows,
                "contaminated": {"piqa": 2, "arc_easy": 0},
                "decontaminated": False,
            }
        )
    )
    judged = [
        {
            "prompt": c[-1]["content"],
            "outcome": o,
            "reason_b_second": "B is **clearer**. [[B]]",
            "reason_b_first": "A is clearer. [[A]]",
        }
        for c, o in zip(CONVS, ["win", "win", "tie", "loss"])
    ]
    run.judge_result.write_text(
        json.dumps(
            {
                "a": "base",
                "b": "last",
                "judge": "openai:judge",
                "prompts": 4,
                "judged": 4,
                "counts": {"win": 2, "tie": 1, "loss": 1, "invalid": 0},
                "rates": {
                    "win": {"rate": 0.5, "ci95": [0.15, 0.85]},
                    "tie": {"rate": 0.25, "ci95": [0.05, 0.7]},
                    "loss": {"rate": 0.25, "ci95": [0.05, 0.7]},
                },
                "consistent_share": 0.75,
                "spend": {"prompt_tokens": 900, "completion_tokens": 80, "cost": 0.0012},
                "rows": judged,
            }
        )
    )
    run.judge_answers.parent.mkdir()
    run.judge_answers.write_text(
        json.dumps(
            {
                "a": "base",
                "b": "last",
                "prompts": CONVS,
                "answers": {
                    "a": [f"piano piano {k}" for k in range(4)],
                    "b": [f"Because it has **keys**, and `music` {k}.\n- one\n- two" for k in range(4)],
                },
            }
        )
    )
    points = [
        {"label": label, "step": step, "scores": {"piqa:acc": acc}, "stderr": {"piqa:acc": 0.1}, "n": {"piqa": 20}}
        for label, step, acc in (("base", 0, 0.6), ("step-2", 2, 0.65), ("last", 4, 0.4))
    ]
    report = {"tasks": ["piqa"], "limit": 20, "shots": 0, "points": points}
    run.checkpoint_eval.write_text(json.dumps(report))
    plot_scores(report, metrics, run.checkpoint_plot)
    return run


def test_markdown_in_answers_is_rendered_and_html_escaped():
    assert light_markdown("**yes** and `x<y`\n- item") == "<strong>yes</strong> and <code>x&lt;y</code>\n• item"
    assert light_markdown("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_one_page_with_regressions_win_rate_curves_and_chat(tmp_path):
    run = before_after_run(tmp_path)
    html_path, md_path = write_report(str(run.path), samples=0)
    page, md = html_path.read_text(), md_path.read_text()
    order = [
        "Before/after at a glance",
        "Benchmarks: base vs fine-tuned",
        "Judge: last vs base",
        "Quality over training: task scores and loss per checkpoint",
        "Conversations: base vs fine-tuned",
    ]
    assert [page.index(f"<h2>{t}</h2>") for t in order] == sorted(page.index(f"<h2>{t}</h2>") for t in order)
    assert (
        "Regression: piqa acc fell 0.6000 -&gt; 0.4000 (-0.2000), more than its paired standard error 0.0900." in page
    )
    assert (
        "Regression: arc_easy" not in page and "piqa 2" in page
    )  # within its error: not flagged; contaminated items named
    assert "last beats base on 50% of 4 prompts (95% interval 15%-85%)" in page
    assert "Best piqa:acc: 0.6500 at step-2 (step 2); the final weights score 0.4000." in page
    assert (
        page.count("<div class=convo>") == 3 and page.count("class='msg user'") == 2 * 2 * 3
    )  # two user turns, both columns
    assert "<strong>keys</strong>" in page and "**keys**" not in page.split("Conversations: base vs fine-tuned")[1]
    assert "• one" in page and "$0.0012" in page
    assert (
        "### Conversation 1" in md
        and "> **user:** Riddle 0" in md
        and "![task score and loss per step](checkpoint_scores.png)" in md
    )


def test_page_renders_in_headless_chromium(tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium not installed: apt-get update && apt-get install -y chromium (Debian; works as root)")
    from PIL import Image

    html_path, _ = write_report(str(before_after_run(tmp_path).path), samples=0)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_before_after.png"
    subprocess.run(
        [str(ROOT / "scripts" / "render_report.sh"), str(html_path), str(shot), "1200x4200"], check=True, timeout=180
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 4200)
    colours = set(img.getdata())
    near = lambda rgb: any(all(abs(a - b) < 6 for a, b in zip(c, rgb)) for c in colours)  # noqa: E731
    assert near((0x2E, 0x8B, 0x57)), "the judge's win bar did not render"
    assert near((0xD7, 0xF5, 0xDD)) and near((0xDB, 0xEA, 0xFE)), "the chat bubbles did not render"


def test_the_judge_section_says_why_prompts_got_no_verdict(tmp_path):
    run = before_after_run(tmp_path)
    data = json.loads(run.judge_result.read_text())
    data["counts"] = data["counts"] | {"invalid": 2, "loss": 0}
    data["rows"][2] |= {
        "outcome": "invalid",
        "no_verdict_b_second": 'the reply was cut at --judge-max-tokens 512 before a verdict: "B is"',
    }
    data["rows"][3] |= {
        "outcome": "invalid",
        "no_verdict_b_second": "the judge's reply was empty",
        "no_verdict_b_first": 'the reply was cut at --judge-max-tokens 512 before a verdict: "A"',
    }
    run.judge_result.write_text(json.dumps(data))
    md = write_report(str(run.path), samples=0)[1].read_text()
    assert (
        "No verdict: 2 (2 x the reply was cut at --judge-max-tokens 512 before a verdict; 1 x the judge's reply was empty). "
        "Judge cost"
    ) in md
