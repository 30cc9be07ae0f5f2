"""Assemble the run report: every section is built once as (HTML, Markdown) from what the run folder holds.

HTML is self-contained (plots inlined as base64 PNG, no scripts, no external assets) so it can be mailed or
attached to a bug report; the Markdown references the same plots saved as PNG files next to it. The HTML comes
from Jinja2 templates in report/templates/ (the page, and the blocks a section is made of; report/sections.py),
escaped by Jinja; the Markdown tables from markdown.md_table.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

from markupsafe import Markup

from phinetune.charts import render_all
from phinetune.markdown import md_table
from phinetune.progress import console
from phinetune.report import before_after
from phinetune.report.samples import cached_samples, generate_samples
from phinetune.report.sections import BLOCKS, ENV, Section, html_table
from phinetune.runs.folders import open_run
from phinetune.runs.run_dir import RunDir
from phinetune.runs.status import NO_SAMPLES, require_final_weights, run_status


def fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("" if value is None else str(value))


def summary_section(run: RunDir, metrics: list[dict]) -> Section:
    info = run.read_info()
    evals = [m for m in metrics if "eval_loss" in m]
    speeds = [m["tokens_per_s"] for m in metrics if isinstance(m.get("tokens_per_s"), (int, float))]
    steps = max((m["step"] for m in metrics if "loss" in m), default=0)
    rows = [
        ["run folder", str(run.path)],
        ["base model", info.base_model],
        ["model spec", info.spec],
        ["method", f"{info.method} (quant: {info.quant}, dtype: {info.dtype})"],
        ["status", run_status(run).text],
        ["optimizer steps", steps],
        ["phinetune", info.phinetune_version],
    ]
    if evals:
        first, last = evals[0], evals[-1]
        rows.append(
            [
                "eval loss (perplexity)",
                f"{first['eval_loss']:.4f} ({math.exp(min(first['eval_loss'], 50)):.2f}) at step {first['step']} "
                f"-> {last['eval_loss']:.4f} ({math.exp(min(last['eval_loss'], 50)):.2f}) at step {last['step']}",
            ]
        )
    if speeds:
        rows.append(["tokens/s (mean of logged windows)", f"{sum(speeds) / len(speeds):,.0f}"])
    return Section("Summary", html_table(["field", "value"], rows), md_table(["field", "value"], rows))


def config_section(run: RunDir) -> Section:
    text = run.config.read_text() if run.config.exists() else "(no config.yaml)"
    return Section("Config", BLOCKS.pre(text), f"```yaml\n{text.rstrip()}\n```")


def preflight_section(run: RunDir) -> Section | None:
    """RUN/preflight.json (written by the pre-flight, when it ran); None when the run has none."""
    path = run.preflight
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return Section(
            "Pre-flight",
            BLOCKS.muted(f"{path.name} is not valid JSON; not shown."),
            f"_{path.name} is not valid JSON; not shown._",
        )
    if not isinstance(data, dict) or "layers" not in data:  # an older or foreign file: show it as it is
        text = json.dumps(data, indent=2)
        return Section("Pre-flight", BLOCKS.pre(text), f"```json\n{text}\n```")
    return _preflight_view(data)


def _preflight_view(data: dict) -> Section:
    """Facts first, then what is trained per layer type, then the sample with its trained tokens marked."""
    eot_with, eot_chat = data.get("eot_samples", [0, 0])
    facts = [
        ["trainable parameters", f"{data['trainable']:,} of {data['total']:,} ({data.get('share_percent', 0):.2f}%)"],
        [
            "end-of-turn token trained",
            f"{'yes' if data.get('eot_trained') else 'NO'}: {data.get('eot_token', '')} in {eot_with}/{eot_chat} chat samples",
        ],
        ["samples with no trained token", data.get("empty_samples", 0)],
        [
            "dtype",
            f"{data.get('dtype', {}).get('dtype', '')} ({data.get('dtype', {}).get('reason', '')}), quant {data.get('dtype', {}).get('quant', '')}",
        ],
        ["not adapted (by choice of targets)", ", ".join(data.get("not_adapted") or []) or "nothing"],
        ["problems", "; ".join(data.get("problems") or []) or "none"],
    ]
    layers = [[r["layer_type"], r["kind"], r["count"], f"{r['trainable']:,}"] for r in data["layers"]]
    layer_head = ["layer type", "how it is trained", "modules", "trainable parameters"]
    # Markdown renders no bold inside a code block: the trained tokens are marked as the pre-flight prints them
    md_sample = "".join(f"[[{piece}]]" if trained else piece for piece, trained in data.get("sample", []))
    page = (
        html_table(["check", "value"], facts)
        + html_table(layer_head, layers, numeric={2, 3})
        + BLOCKS.note("One training sample; trained tokens are highlighted:")
        + BLOCKS.marked(data.get("sample", []))
    )
    md = (
        md_table(["check", "value"], facts)
        + "\n\n"
        + md_table(layer_head, layers)
        + f"\n\nOne training sample; trained tokens between [[ ]]:\n\n{fenced(md_sample)}"
    )
    return Section("Pre-flight", page, md)


def fenced(text: str) -> str:
    """A Markdown code block that `text` cannot close early (a sample of code data holds ``` itself)."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}\n{text}\n{fence}"


def curves_section(metrics: list[dict], plots_dir: Path) -> Section:
    charts = render_all(metrics)
    if not charts:
        return Section("Training curves", BLOCKS.muted("No metrics logged."), "_No metrics logged._")
    plots_dir.mkdir(parents=True, exist_ok=True)
    figs, md = [], []
    for name, (chart, png) in charts.items():
        (plots_dir / f"{name}.png").write_bytes(png)
        figs.append((chart.title, base64.b64encode(png).decode("ascii")))
        md.append(f"![{chart.title}]({plots_dir.name}/{name}.png)")
    return Section("Training curves", BLOCKS.figures(figs), "\n\n".join(md))


def eval_section(run: RunDir) -> Section | None:
    path = run.eval_report
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    header = ["task", "metric", "n", "base", "tuned", "delta", "stderr (paired)"]
    rows = [
        [r["task"], r["metric"], r["n"], fmt(r["base"]), fmt(r["tuned"]), f"{r['delta']:+.4f}", fmt(r["stderr"])]
        for r in report["rows"]
    ]
    if any(r["drop"] for r in report["rows"]):  # a named column, and only when there is something to flag
        header.append("flag")
        rows = [row + ["DROP > stderr" if r["drop"] else ""] for row, r in zip(rows, report["rows"])]
    note = (
        f"Scored by {report['scorer']}, {report['shots']}-shot, "
        f"{report['limit'] or 'all'} items per task, data: {report['data']}. A drop is flagged when the score fell by more than its standard error."
    )
    table = html_table(
        header, rows, numeric={2, 3, 4, 5, 6}, row_class=lambda k: "drop" if report["rows"][k]["drop"] else ""
    )
    return Section("Benchmarks: base vs fine-tuned", BLOCKS.note(note) + table, f"{note}\n\n{md_table(header, rows)}")


def markdown_tables_html(text: str) -> str:
    """compare.md as HTML: its `| a | b |` tables as tables (cells keep their `<br>` line breaks, escaped `\\|`
    stays a bar), headings and other lines as paragraphs. Only the Markdown compare.md writes, not Markdown at large."""
    out, table = [], []

    def flush() -> None:
        if len(table) >= 2:  # the cells are escaped by the template; only their <br> line breaks come back
            out.append(
                str(html_table(table[0], table[2:] if set(table[1]) <= {"---", ""} else table[1:], css="wide")).replace(
                    "&lt;br&gt;", "<br>"
                )
            )
        table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            table.append([c.strip().replace("\\|", "|") for c in cells])
            continue
        flush()
        if line.strip():
            out.append(str(BLOCKS.note(line.lstrip("# ").strip())))
    flush()
    return Markup("".join(out))


def compare_section(run: RunDir) -> Section | None:
    """RUN/compare.md (written by `phinetune compare` for the user's own prompts): its Markdown tables become HTML tables."""
    if not run.compare.exists():
        return None
    text = run.compare.read_text()
    return Section("Sample answers: before vs after", markdown_tables_html(text), text)


def held_out_answers(run: RunDir, n: int) -> None:
    """Answer n held-out prompts with base and tuned into RUN/samples.json, unless the report already has held-out answers
    to show (cached samples, or the judge's answers of base vs the final weights): the report shows them once, as conversations."""
    if n > 0 and cached_samples(run) is None and not before_after.judged_conversations(run):
        require_final_weights(run, instead=NO_SAMPLES)
        generate_samples(run, n)


def build_sections(run: RunDir, samples: int) -> list[Section]:
    metrics = run.read_metrics()
    held_out_answers(run, samples)
    sections = [
        summary_section(run, metrics),
        before_after.glance_section(run),
        config_section(run),
        preflight_section(run),
        curves_section(metrics, run.report_plots),
        eval_section(run),
        before_after.judge_section(run),
        before_after.checkpoints_section(run),
        compare_section(run),
        before_after.conversations_section(run, samples or 3),
    ]
    return [s for s in sections if s is not None]


def write_report(run_path: str, samples: int = 3) -> tuple[Path, Path]:
    """`phinetune report`: RUN/report.html and RUN/report.md, and a line naming them."""
    check_report_run(run_path, samples)
    run = open_run(run_path)
    sections = build_sections(run, samples)
    title = f"phinetune run report: {run.path.name}"
    page = ENV.get_template("report.html.jinja").render(title=title, sections=sections)
    html_path, md_path = run.report_html, run.report_md
    html_path.write_text(page, encoding="utf-8")
    md_path.write_text(
        f"# {title}\n\n" + "\n\n".join(f"## {s.title}\n\n{s.md}" for s in sections) + "\n", encoding="utf-8"
    )
    console.print(f"report: {html_path}  (markdown: {md_path})")
    return html_path, md_path


def check_report_run(run_path: str, samples: int) -> None:
    """RUN is a run folder, with final weights when held-out answers are still to be made: one sentence otherwise,
    before anything is loaded."""
    from phinetune.runs.targets import check_run

    run = RunDir(Path(run_path))
    kept = run.compare.exists() or run.samples.exists()  # answers the report reuses
    check_run(run_path, None, final=samples > 0 and not kept, instead=NO_SAMPLES)
