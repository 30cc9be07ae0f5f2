"""The report's before/after sections: what fine-tuning changed, on one page, from what the run folder holds.

- At a glance: benchmark regressions beyond the paired standard error, the judge's win rate, the best checkpoint.
- The judge's win rate (RUN/judge.json) with its interval, order consistency, cost and reasons.
- Quality over training (RUN/checkpoint_eval.json): task score against step next to the loss curves.
- Conversations: held-out conversations with the base's and the tuned model's answers as chat bubbles,
  with the answers' light Markdown (bold, code, lists) rendered rather than shown as raw symbols.

Each section is (HTML, Markdown) like the rest of report/page.py and is left out when its file is absent.
HTML carries its own small <style>, so the page stays self-contained.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Optional

from phinetune.runs.run_dir import RunDir

CSS = """<style>.glance li{margin:.2em 0}.flag{color:#b00;font-weight:bold}.ok{color:#1a7f37}
.bar{display:flex;height:1.4em;width:100%;max-width:640px;border-radius:4px;overflow:hidden;margin:.4em 0;font-size:.8em;color:#fff}
.bar span{display:flex;align-items:center;justify-content:center}.bar .win{background:#2e8b57}.bar .tie{background:#9aa0a6}.bar .loss{background:#c0392b}
.convo{display:grid;grid-template-columns:1fr 1fr;gap:1em;margin:1em 0 1.6em}.convo h3,.convo .ref{grid-column:1/-1;margin:.2em 0}.convo h3{font-size:1em}
.chat{border:1px solid #ddd;border-radius:8px;padding:.6em;background:#fafafa}.chat .who{font-weight:bold;font-size:.85em;color:#555;margin-bottom:.3em}
.msg{border-radius:12px;padding:.45em .8em;margin:.35em 0;max-width:92%;white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.35}
.msg.user{background:#dbeafe;margin-left:auto}.msg.assistant{background:#ececec}.msg.answer.base{background:#fde2e1}.msg.answer.tuned{background:#d7f5dd}
.msg code{background:#0000000f;padding:0 .2em;border-radius:3px}.role{display:block;font-size:.72em;color:#666;margin-bottom:.1em}</style>"""


def esc(value) -> str:
    return html.escape(str(value))


def light_markdown(text: str) -> str:
    """Escaped text with **bold**, `code` and '- ' list bullets rendered (what small chat models actually emit)."""
    out = esc(text)
    out = re.sub(r"`([^`\n]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*\n]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?m)^(\s*)[-*] ", r"\1• ", out)


def _read(path) -> Optional[dict]:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------- at a glance

def glance_section(run: RunDir) -> Optional[tuple[str, str, str]]:
    evals, judge, points = _read(run.eval_report), _read(run.judge_result), _read(run.checkpoint_eval)
    if not (evals or judge or points):
        return None
    items: list[tuple[str, str]] = []  # (css class, text)
    if evals:
        drops = [r for r in evals["rows"] if r["drop"]]
        for r in drops:
            items.append(("flag", f"Regression: {r['task']} {r['metric']} fell {r['base']:.4f} -> {r['tuned']:.4f} "
                                  f"({r['delta']:+.4f}), more than its paired standard error {r['stderr']:.4f}."))
        if not drops:
            items.append(("ok", f"No benchmark score fell by more than its paired standard error ({len(evals['rows'])} scores)."))
        dirty = {t: k for t, k in (evals.get("contaminated") or {}).items() if k}
        if dirty:
            how = "left out" if evals.get("decontaminated") else "included in the scores"
            items.append(("flag", "Contaminated items (overlapping training samples), " + how + ": "
                                  + ", ".join(f"{t} {k}" for t, k in dirty.items()) + "."))
    if judge and judge.get("judged"):
        w = judge["rates"]["win"]
        items.append(("", f"Judge ({judge['judge']}): {judge['b']} beats {judge['a']} on {w['rate']:.0%} of {judge['judged']} prompts "
                          f"(95% interval {w['ci95'][0]:.0%}-{w['ci95'][1]:.0%}), loses on {judge['rates']['loss']['rate']:.0%}."))
    if points and points.get("points"):
        for key in points["points"][0]["scores"]:
            best = max(points["points"], key=lambda p: (p["scores"][key], -p["step"]))
            last = points["points"][-1]
            note = "" if best is last else f"; the final weights score {last['scores'][key]:.4f}"
            items.append(("flag" if best is not last and best["label"] != "base" else "",
                          f"Best {key}: {best['scores'][key]:.4f} at {best['label']} (step {best['step']}){note}."))
    page = CSS + "<ul class=glance>" + "".join(f"<li class='{c}'>{esc(t)}</li>" for c, t in items) + "</ul>"
    return "Before/after at a glance", page, "\n".join(f"- {t}" for _, t in items)


# ---------------------------------------------------------------- judge

def judge_section(run: RunDir) -> Optional[tuple[str, str, str]]:
    data = _read(run.judge_result)
    if not data:
        return None
    r, c = data["rates"], data["counts"]
    bar = "".join(f"<span class={k} style='width:{100 * r[k]['rate']:.1f}%'>{k} {r[k]['rate']:.0%}</span>" for k in ("win", "tie", "loss") if r[k]["rate"] > 0)
    rows = "".join(f"<tr><td>{k}</td><td class=num>{c[k]}</td><td class=num>{r[k]['rate']:.1%}</td>"
                   f"<td class=num>{r[k]['ci95'][0]:.1%} - {r[k]['ci95'][1]:.1%}</td></tr>" for k in ("win", "tie", "loss"))
    note = (f"{data['judge']} compared {data['b']} (B) with {data['a']} (A) on {data['prompts']} held-out prompts, each judged in both orders; "
            f"a win or loss needs the same verdict in both orders. Verdicts consistent across orders: {data['consistent_share']:.0%}. "
            f"No verdict: {c.get('invalid', 0)}{_no_verdict_why(data['rows'])}. Judge cost: ${data['spend']['cost']:.4f} "
            f"({data['spend']['prompt_tokens']:,} prompt + {data['spend']['completion_tokens']:,} completion tokens).")
    reasons = "".join(f"<details><summary>{esc(row['outcome'])}: {esc(row['prompt'][:120])}</summary>"
                      f"<p><b>B shown second:</b> {light_markdown(row['reason_b_second'])}</p>"
                      f"<p><b>B shown first:</b> {light_markdown(row['reason_b_first'])}</p></details>" for row in data["rows"][:10])
    page = (f"{CSS}<p>{esc(note)}</p><div class=bar>{bar}</div><table><thead><tr><th>outcome for {esc(data['b'])}</th><th>count</th>"
            f"<th>rate</th><th>95% interval (Wilson)</th></tr></thead><tbody>{rows}</tbody></table>{reasons}")
    md = note + "\n\n| outcome | count | rate | 95% interval |\n|---|---|---|---|\n" + "\n".join(
        f"| {k} | {c[k]} | {r[k]['rate']:.1%} | {r[k]['ci95'][0]:.1%} - {r[k]['ci95'][1]:.1%} |" for k in ("win", "tie", "loss"))
    return f"Judge: {data['b']} vs {data['a']}", page, md


def _no_verdict_why(rows: list[dict]) -> str:
    """' (why, per reply without a verdict: 2 x the reply was cut at ...)', from judge.json's rows; '' when none is missing."""
    from collections import Counter

    why = Counter(r[key].split(': "')[0] for r in rows for key in ("no_verdict_b_second", "no_verdict_b_first") if r.get(key))
    return f" ({'; '.join(f'{n} x {reason}' for reason, n in why.most_common())})" if why else ""


# ---------------------------------------------------------------- checkpoints

def checkpoints_section(run: RunDir) -> Optional[tuple[str, str, str]]:
    data = _read(run.checkpoint_eval)
    if not data or not data.get("points"):
        return None
    keys = list(data["points"][0]["scores"])
    head = "".join(f"<th>{esc(k)}</th>" for k in ["checkpoint", "step", *keys])
    body = "".join("<tr>" + f"<td>{esc(p['label'])}</td><td class=num>{p['step']}</td>"
                   + "".join(f"<td class=num>{p['scores'][k]:.4f} ± {p['stderr'][k]:.4f}</td>" for k in keys) + "</tr>" for p in data["points"])
    img = ""
    if run.checkpoint_plot.exists():
        img = f'<figure><img alt="task score and loss per step" style="max-width:100%" src="data:image/png;base64,{base64.b64encode(run.checkpoint_plot.read_bytes()).decode()}"></figure>'
    note = (f"Each kept checkpoint, the base (step 0) and the final weights scored on {', '.join(data['tasks'])} "
            f"({data['limit'] or 'all'} items per task); error bars and ± are one standard error.")
    md = note + "\n\n" + f"![task score and loss per step]({run.checkpoint_plot.name})\n\n| " + " | ".join(["checkpoint", "step", *keys]) + " |\n|" + "---|" * (len(keys) + 2) + "\n" + "\n".join(
        "| " + " | ".join([p["label"], str(p["step"]), *(f"{p['scores'][k]:.4f} ± {p['stderr'][k]:.4f}" for k in keys)]) + " |" for p in data["points"])
    return "Quality over training: task scores and loss per checkpoint", f"<p>{esc(note)}</p>{img}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", md


# ---------------------------------------------------------------- conversations

def judged_conversations(run: RunDir) -> list[dict]:
    """The judge's answers when it compared the base with the final weights (whole conversations), else []."""
    judged = _read(run.judge_answers)
    if judged and judged.get("a") == "base" and judged.get("b") == "last":
        return [{"messages": p, "base": a, "tuned": b} for p, a, b in zip(judged["prompts"], judged["answers"]["a"], judged["answers"]["b"])]
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
        conv = convs[k] if k < len(convs) and convs[k] and convs[k][-1]["content"] == s["prompt"] else [{"role": "user", "content": s["prompt"]}]
        out.append({"messages": conv, "base": s.get("base", ""), "tuned": s.get("tuned", ""), "reference": s.get("reference")})
    return out


def _bubbles(messages: list[dict], answer: str, side: str) -> str:
    turns = "".join(f"<div class='msg {esc(m['role'])}'><span class=role>{esc(m['role'])}</span>{light_markdown(m['content'])}</div>" for m in messages)
    return (f"<div class=chat><div class=who>{'base model' if side == 'base' else 'fine-tuned'}</div>{turns}"
            f"<div class='msg assistant answer {side}'><span class=role>assistant ({side})</span>{light_markdown(answer)}</div></div>")


def conversations_section(run: RunDir, n: int = 3) -> Optional[tuple[str, str, str]]:
    convs = conversations(run, n)
    if not convs:
        return None
    note = "Held-out conversations of this run, answered greedily by the base model and by the fine-tuned one."
    page = CSS + f"<p>{esc(note)}</p>" + "".join(
        f"<div class=convo><h3>Conversation {k}</h3>{_reference(c)}{_bubbles(c['messages'], c['base'], 'base')}"
        f"{_bubbles(c['messages'], c['tuned'], 'tuned')}</div>" for k, c in enumerate(convs, start=1))
    md = [note]
    for k, c in enumerate(convs, start=1):
        turns = "\n>\n".join(f"> **{m['role']}:** {m['content']}" for m in c["messages"])  # one paragraph per turn
        reference = f"\n\n**held-out answer:** {c['reference']}" if c.get("reference") else ""
        md.append(f"### Conversation {k}\n\n{turns}{reference}\n\n**base:** {c['base']}\n\n**fine-tuned:** {c['tuned']}")
    return "Conversations: base vs fine-tuned", page, "\n\n".join(md)


def _reference(conv: dict) -> str:
    return f"<p class=ref><b>held-out answer:</b> {light_markdown(conv['reference'])}</p>" if conv.get("reference") else ""
