"""The report's before/after sections: what fine-tuning changed, on one page, from what the run folder holds.

- At a glance: benchmark regressions beyond the paired standard error, the judge's win rate, the best checkpoint.
- The judge's win rate (RUN/judge.json) with its interval, order consistency, cost and reasons.
- Quality over training (RUN/checkpoint_eval.json): task score against step next to the loss curves.
- Conversations: held-out conversations with the base's and the tuned model's answers as chat bubbles,
  with the answers' light Markdown (bold, code, lists) rendered rather than shown as raw symbols.

Each is a Section like the rest of report/page.py, left out when its file is absent: the HTML from the macros in
report/templates/before_after.html.jinja (escaped by Jinja), the Markdown tables from markdown.md_table.
"""

from __future__ import annotations

import base64
import json

from phinetune.markdown import md_table
from phinetune.report.sections import BEFORE_AFTER, Section
from phinetune.runs.run_dir import RunDir


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------- at a glance


def glance_section(run: RunDir) -> Section | None:
    evals, judge, points = _read(run.eval_report), _read(run.judge_result), _read(run.checkpoint_eval)
    if not (evals or judge or points):
        return None
    items: list[tuple[str, str]] = []  # (css class, text)
    if evals:
        drops = [r for r in evals["rows"] if r["drop"]]
        for r in drops:
            items.append(
                (
                    "flag",
                    f"Regression: {r['task']} {r['metric']} fell {r['base']:.4f} -> {r['tuned']:.4f} "
                    f"({r['delta']:+.4f}), more than its paired standard error {r['stderr']:.4f}.",
                )
            )
        if not drops:
            items.append(
                ("ok", f"No benchmark score fell by more than its paired standard error ({len(evals['rows'])} scores).")
            )
        dirty = {t: k for t, k in (evals.get("contaminated") or {}).items() if k}
        if dirty:
            how = "left out" if evals.get("decontaminated") else "included in the scores"
            items.append(
                (
                    "flag",
                    "Contaminated items (overlapping training samples), "
                    + how
                    + ": "
                    + ", ".join(f"{t} {k}" for t, k in dirty.items())
                    + ".",
                )
            )
    if judge and judge.get("judged"):
        w = judge["rates"]["win"]
        items.append(
            (
                "",
                f"Judge ({judge['judge']}): {judge['b']} beats {judge['a']} on {w['rate']:.0%} of {judge['judged']} prompts "
                f"(95% interval {w['ci95'][0]:.0%}-{w['ci95'][1]:.0%}), loses on {judge['rates']['loss']['rate']:.0%}.",
            )
        )
    if points and points.get("points"):
        for key in points["points"][0]["scores"]:
            best = max(points["points"], key=lambda p: (p["scores"][key], -p["step"]))
            last = points["points"][-1]
            note = "" if best is last else f"; the final weights score {last['scores'][key]:.4f}"
            items.append(
                (
                    "flag" if best is not last and best["label"] != "base" else "",
                    f"Best {key}: {best['scores'][key]:.4f} at {best['label']} (step {best['step']}){note}.",
                )
            )
    return Section("Before/after at a glance", BEFORE_AFTER.glance(items), "\n".join(f"- {t}" for _, t in items))


# ---------------------------------------------------------------- judge


def judge_section(run: RunDir) -> Section | None:
    data = _read(run.judge_result)
    if not data:
        return None
    r, c = data["rates"], data["counts"]
    outcomes = ("win", "tie", "loss")
    bar = [(k, f"{100 * r[k]['rate']:.1f}", f"{k} {r[k]['rate']:.0%}") for k in outcomes if r[k]["rate"] > 0]
    rows = [[k, c[k], f"{r[k]['rate']:.1%}", f"{r[k]['ci95'][0]:.1%} - {r[k]['ci95'][1]:.1%}"] for k in outcomes]
    note = (
        f"{data['judge']} compared {data['b']} (B) with {data['a']} (A) on {data['prompts']} held-out prompts, "
        "each judged in both orders; a win or loss needs the same verdict in both orders. "
        f"Verdicts consistent across orders: {data['consistent_share']:.0%}. "
        f"No verdict: {c.get('invalid', 0)}{_no_verdict_why(data['rows'])}. Judge cost: ${data['spend']['cost']:.4f} "
        f"({data['spend']['prompt_tokens']:,} prompt + {data['spend']['completion_tokens']:,} completion tokens)."
    )
    header = [f"outcome for {data['b']}", "count", "rate", "95% interval (Wilson)"]
    page = BEFORE_AFTER.judge(note, bar, header, rows, data["rows"][:10])
    md = note + "\n\n" + md_table(["outcome", "count", "rate", "95% interval"], rows)
    return Section(f"Judge: {data['b']} vs {data['a']}", page, md)


def _no_verdict_why(rows: list[dict]) -> str:
    """' (why, per reply without a verdict: 2 x the reply was cut at ...)', from judge.json's rows; '' when none is missing."""
    from collections import Counter

    why = Counter(
        r[key].split(': "')[0] for r in rows for key in ("no_verdict_b_second", "no_verdict_b_first") if r.get(key)
    )
    return f" ({'; '.join(f'{n} x {reason}' for reason, n in why.most_common())})" if why else ""


# ---------------------------------------------------------------- checkpoints


def checkpoints_section(run: RunDir) -> Section | None:
    data = _read(run.checkpoint_eval)
    if not data or not data.get("points"):
        return None
    keys = list(data["points"][0]["scores"])
    header = ["checkpoint", "step", *keys]
    rows = [
        [p["label"], p["step"], *(f"{p['scores'][k]:.4f} ± {p['stderr'][k]:.4f}" for k in keys)] for p in data["points"]
    ]
    image = base64.b64encode(run.checkpoint_plot.read_bytes()).decode() if run.checkpoint_plot.exists() else ""
    note = (
        f"Each kept checkpoint, the base (step 0) and the final weights scored on {', '.join(data['tasks'])} "
        f"({data['limit'] or 'all'} items per task); error bars and ± are one standard error."
    )
    md = f"{note}\n\n![task score and loss per step]({run.checkpoint_plot.name})\n\n{md_table(header, rows)}"
    return Section(
        "Quality over training: task scores and loss per checkpoint",
        BEFORE_AFTER.checkpoints(note, image, header, rows),
        md,
    )


# ---------------------------------------------------------------- conversations


def judged_conversations(run: RunDir) -> list[dict]:
    """The judge's answers when it compared the base with the final weights (whole conversations), else []."""
    judged = _read(run.judge_answers)
    if judged and judged.get("a") == "base" and judged.get("b") == "last":
        return [
            {"messages": p, "base": a, "tuned": b}
            for p, a, b in zip(judged["prompts"], judged["answers"]["a"], judged["answers"]["b"])
        ]
    return []


def conversations(run: RunDir, n: int = 3) -> list[dict]:
    """[{"messages": [...before the answer], "base": str, "tuned": str, "reference": str (samples only)}]: from the judge's
    answers when it compared base with the final weights, else the report's samples matched to the held-out conversations."""
    judged = judged_conversations(run)
    if judged:
        return judged[:n]
    samples = json.loads(run.samples.read_text()) if run.samples.exists() else []
    if not samples:
        return []
    from phinetune.errors import PhinetuneError
    from phinetune.runs.held_out import held_out_prompts

    try:
        convs = [conv for conv, _ in held_out_prompts(run, len(samples))]
    except PhinetuneError:
        convs = []
    out = []
    for k, s in enumerate(samples[:n]):
        conv = (
            convs[k]
            if k < len(convs) and convs[k] and convs[k][-1]["content"] == s["prompt"]
            else [{"role": "user", "content": s["prompt"]}]
        )
        out.append(
            {"messages": conv, "base": s.get("base", ""), "tuned": s.get("tuned", ""), "reference": s.get("reference")}
        )
    return out


def conversations_section(run: RunDir, n: int = 3) -> Section | None:
    convs = conversations(run, n)
    if not convs:
        return None
    note = "Held-out conversations of this run, answered greedily by the base model and by the fine-tuned one."
    md = [note]
    for k, c in enumerate(convs, start=1):
        turns = "\n>\n".join(f"> **{m['role']}:** {m['content']}" for m in c["messages"])  # one paragraph per turn
        reference = f"\n\n**held-out answer:** {c['reference']}" if c.get("reference") else ""
        md.append(
            f"### Conversation {k}\n\n{turns}{reference}\n\n**base:** {c['base']}\n\n**fine-tuned:** {c['tuned']}"
        )
    return Section("Conversations: base vs fine-tuned", BEFORE_AFTER.conversations(note, convs), "\n\n".join(md))
