"""`phinetune judge RUN`: a teacher model compares two models' answers to the run's held-out prompts, pairwise.

Chat quality is judged by reading conversations; this has a judge read them. Model A (default: the base) and
model B (default: the final weights; or any two of base, last, best, step-N) answer the same prompts greedily.
The judge sees each pair twice, once in each order, because LLM judges favour a position (MT-Bench, Zheng et
al. 2023): a prompt counts as a win for B only when B is preferred in both orders, a loss only when A is,
and a tie otherwise (MT-Bench's "inconsistent verdicts are ties"). Rates come with Wilson 95% intervals.

The judge is any teacher (teachers/: an OpenAI-compatible endpoint or a local model), and every verdict is
journaled like a synth answer (teachers/journal.py): re-running the same command resumes and never repeats a paid
call.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
from dataclasses import dataclass

from rich.table import Table

from phinetune.errors import PhinetuneError
from phinetune.progress import clip, console
from phinetune.runs.folders import open_run
from phinetune.runs.run_dir import RunDir
from phinetune.teachers.calls import Call
from phinetune.teachers.config import RequestSampling as JudgeSampling
from phinetune.teachers.config import TeacherConfig
from phinetune.teachers.journal import Entry, Journal, call_hash, call_key
from phinetune.teachers.refusals import REFUSALS, is_refusal

# MT-Bench's pairwise judge prompt ("pair-v2"), which asks for an explanation first and then a fixed verdict format.
SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user "
    "question displayed below. You should choose the assistant that follows the user's instructions and answers the user's "
    "question better. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
    "and level of detail of their responses. Begin your evaluation by comparing the two responses and provide a short "
    "explanation. Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Be as objective as "
    'possible. After providing your explanation, output your final verdict by strictly following this format: "[[A]]" if '
    'assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
PAIR = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]"
)
VERDICT = re.compile(r"\[\[([ABC])\]\]")
Z95 = 1.959964
# The judge's settings as `phinetune judge` spells them (its errors name these, not synth's teacher.* keys).
JUDGE_FLAGS = {
    "kind": "--judge-kind",
    "model": "--judge-model",
    "base_url": "--base-url",
    "api_key_env": "--api-key-env",
    "concurrency": "--concurrency",
    "price_input_per_1m": "--price-input-per-1m",
    "price_output_per_1m": "--price-output-per-1m",
}


def parse_verdict(text: str) -> str | None:
    """'first', 'second' or 'tie' from the judge's last [[A]]/[[B]]/[[C]]; None when it gave none."""
    found = VERDICT.findall(text or "")
    return {"A": "first", "B": "second", "C": "tie"}[found[-1]] if found else None


def no_verdict_reason(entry: Entry, max_tokens: int) -> str | None:
    """Why a judge reply counts as no verdict, in words, with an excerpt of the reply; None when it has a verdict."""
    text = entry.text or ""
    if parse_verdict(text) is not None:
        return None
    excerpt = clip(" ".join(text.split()), 100)
    if entry.extra.get("refusal"):
        return f'the judge refused: "{clip(" ".join(str(entry.extra["refusal"]).split()), 100)}"'
    if entry.finish_reason == "content_filter":
        return "the endpoint's content filter withheld the judge's reply"
    if not text.strip():
        return "the judge's reply was empty"
    if entry.finish_reason == "length":
        return f'the reply was cut at --judge-max-tokens {max_tokens} before a verdict: "{excerpt}"'
    if is_refusal(text, REFUSALS):
        return f'the judge declined to choose: "{excerpt}"'
    return f'no [[A]], [[B]] or [[C]] in the reply: "{excerpt}"'


def combine(ab: str | None, ba: str | None) -> str:
    """Outcome for B from the verdicts with B second (ab) and B first (ba): win, loss, tie, or invalid."""
    if ab is None or ba is None:
        return "invalid"
    b_in_ab = {"second": "b", "first": "a", "tie": "tie"}[ab]
    b_in_ba = {"first": "b", "second": "a", "tie": "tie"}[ba]
    if b_in_ab == b_in_ba == "b":
        return "win"
    if b_in_ab == b_in_ba == "a":
        return "loss"
    return "tie"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (stays inside [0, 1] and is sane for small n, unlike p ± z·se)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def question_text(prompt: list[dict]) -> str:
    """The conversation up to the answer: the last user turn alone, or every turn when there are several."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@dataclass
class Sides:
    a: str = "base"
    b: str = "last"


def answers_digest(sides: Sides, prompts: list[list[dict]], max_new_tokens: int) -> str:
    return hashlib.sha256(json.dumps([prompts, sides.a, sides.b, max_new_tokens]).encode()).hexdigest()[:16]


def cached_answers(
    run: RunDir, sides: Sides, prompts: list[list[dict]], max_new_tokens: int
) -> dict[str, list[str]] | None:
    """The answers RUN/judge/answers.json holds for these prompts, sides and length, else None."""
    if not run.judge_answers.exists():
        return None
    cached = json.loads(run.judge_answers.read_text())
    return cached["answers"] if cached.get("digest") == answers_digest(sides, prompts, max_new_tokens) else None


def answers(
    run: RunDir, sides: Sides, prompts: list[list[dict]], max_new_tokens: int, batch_size: int
) -> dict[str, list[str]]:
    """Greedy answers of both sides, cached in RUN/judge/answers.json (reused while prompts, sides and length match)."""
    from phinetune.infer.complete import Sampling
    from phinetune.infer.generate import answer_all
    from phinetune.runs.loading import load_for_inference

    cached = cached_answers(run, sides, prompts, max_new_tokens)
    if cached is not None:
        return cached
    points = [side_point(run, "--a", sides.a), side_point(run, "--b", sides.b)]
    if points[0] == points[1]:
        raise PhinetuneError(
            f"judge: --a {sides.a} and --b {sides.b} are the same weights ({points[0].label}); pick two different ones"
        )
    out = {}
    for side, p in zip(("a", "b"), points):
        loaded = load_for_inference(str(run.path), adapter=p.adapter, checkpoint=p.checkpoint)
        out[side] = [
            a.text.strip()
            for a in answer_all(loaded, prompts, Sampling(max_new_tokens=max_new_tokens), batch_size, p.label)
        ]
        del loaded
        gc.collect()
    path = run.judge_answers
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "digest": answers_digest(sides, prompts, max_new_tokens),
                "a": sides.a,
                "b": sides.b,
                "prompts": prompts,
                "answers": out,
            },
            indent=1,
            ensure_ascii=False,
        )
    )
    return out


def side_point(run: RunDir, flag: str, name: str):
    """The one model `--a`/`--b` names; the checkpoint errors (which speak of --checkpoint) spoken as that flag."""
    from phinetune.runs.checkpoints import select

    if not name.strip() or name.strip() == "all" or "," in name:
        raise PhinetuneError(f"{flag} {name!r}: one model per side: base, last, best or step-N")
    try:
        return select(run, name.strip())[0]
    except PhinetuneError as exc:
        raise PhinetuneError(re.sub(r"--checkpoints?\b", flag, str(exc))) from None


def judge_calls(
    teacher: TeacherConfig, sampling: JudgeSampling, prompts: list[list[dict]], ans: dict[str, list[str]]
) -> list[Call]:
    """Two calls per prompt: B second ("ab"), then B first ("ba"). Keys hash everything sent, as synth's do."""
    calls = []
    for i, prompt in enumerate(prompts):
        q, a, b = question_text(prompt), ans["a"][i], ans["b"][i]
        for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": PAIR.format(question=q, first=first, second=second)},
            ]
            payload = {"model": teacher.model, "messages": messages, "sampling": sampling.model_dump()}
            calls.append(
                Call(
                    call_key("judge", str(i), {"ab": 0, "ba": 1}[order], call_hash(payload)), messages, sampling, seed=0
                )
            )
    return calls


def refuse_unreachable(teacher: TeacherConfig) -> None:
    """An OpenAI-compatible judge without a key for the OpenAI API, or on a local port nothing listens on: one sentence now."""
    from phinetune.teachers.make import make_teacher

    probe = make_teacher(teacher, JUDGE_FLAGS)
    try:
        probe.check_listening()
    finally:
        probe.close()


def judge_run(
    run_path: str,
    teacher: TeacherConfig,
    sides: Sides = Sides(),
    prompts_file=None,
    n: int = 10,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    judge_max_tokens: int = 512,
) -> dict:
    from phinetune.teachers.make import make_teacher

    run = open_run(run_path)
    # Answers still to make (two models to load): a missing key or a local endpoint where nothing listens is refused
    # first, before even torch is imported. With the answers cached, the journal may hold every verdict and need no
    # endpoint at all.
    probed = teacher.kind == "openai" and not run.judge_answers.exists()
    if probed:
        refuse_unreachable(teacher)
    from phinetune.data.prompts import read_prompt_rows
    from phinetune.infer.compare import default_prompts

    pairs = (
        [(r["messages"], r.get("reference")) for r in read_prompt_rows(prompts_file)]
        if prompts_file
        else default_prompts(run, n)
    )
    prompts = [p for p, _ in pairs]
    if teacher.kind == "openai" and not probed and cached_answers(run, sides, prompts, max_new_tokens) is None:
        refuse_unreachable(teacher)
    ans = answers(run, sides, prompts, max_new_tokens, batch_size)
    sampling = JudgeSampling(max_tokens=judge_max_tokens, temperature=0.0, top_p=1.0)
    calls = judge_calls(teacher, sampling, prompts, ans)
    with Journal(run.judge_journal) as journal:
        todo = [c for c in calls if c.key not in journal]
        reused = len(calls) - len(todo)
        if todo:
            judge = make_teacher(teacher, JUDGE_FLAGS)
            console.print(
                f"judging {len(prompts)} prompt(s) in both orders with {judge.describe}: {len(todo)} call(s) to make, {reused} from the journal"
            )
            try:
                judge.run(todo, lambda call, entry: journal.append(entry))
            finally:
                judge.close()
        entries = [journal.get(c.key) for c in calls]
    result = summarise(run, teacher, sides, prompts, ans, entries, judge_max_tokens)
    result["calls"] = {"made": len(todo), "from_journal": reused}
    run.judge_result.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    console.print(result_table(result))
    for line in no_verdict_lines(result):
        console.print(line)
    console.print(f"saved {run.judge_result} (journal: {run.judge_journal})")
    return result


def summarise(run: RunDir, teacher: TeacherConfig, sides: Sides, prompts, ans, entries, max_tokens: int = 512) -> dict:
    rows, counts = [], {"win": 0, "tie": 0, "loss": 0, "invalid": 0}
    for i, prompt in enumerate(prompts):
        ab, ba = entries[2 * i], entries[2 * i + 1]
        va, vb = parse_verdict(ab.text), parse_verdict(ba.text)
        outcome = combine(va, vb)
        counts[outcome] += 1
        rows.append(
            {
                "prompt": question_text(prompt),
                "last_turn": prompt[-1]["content"],
                "a": ans["a"][i],
                "b": ans["b"][i],
                "outcome": outcome,
                "verdict_b_second": va,
                "verdict_b_first": vb,
                "reason_b_second": ab.text,
                "reason_b_first": ba.text,
                "no_verdict_b_second": no_verdict_reason(ab, max_tokens),
                "no_verdict_b_first": no_verdict_reason(ba, max_tokens),
            }
        )
    judged = counts["win"] + counts["tie"] + counts["loss"]
    rates = {
        k: {"rate": counts[k] / judged if judged else 0.0, "ci95": list(wilson(counts[k], judged))}
        for k in ("win", "tie", "loss")
    }
    consistent = sum(
        1 for r in rows if r["outcome"] in ("win", "loss") or (r["verdict_b_second"] == r["verdict_b_first"] == "tie")
    )
    spend = {
        "prompt_tokens": sum(e.prompt_tokens for e in entries),
        "completion_tokens": sum(e.completion_tokens for e in entries),
        "cost": round(sum(e.cost for e in entries), 6),
    }
    return {
        "run": str(run.path),
        "a": sides.a,
        "b": sides.b,
        "judge": f"{teacher.kind}:{teacher.model}",
        "prompts": len(prompts),
        "judged": judged,
        "counts": counts,
        "rates": rates,
        "consistent_share": consistent / judged if judged else 0.0,
        "spend": spend,
        "rows": rows,
    }


SHOWN_NO_VERDICTS = 5  # prompts whose missing verdicts are explained on the console (all of them are in judge.json)


def no_verdict_lines(result: dict) -> list[str]:
    """Why each prompt counted as no verdict: per order without one, the reason and an excerpt of the judge's reply."""
    missing = [r for r in result["rows"] if r["outcome"] == "invalid"]
    if not missing:
        return []
    lines = [f"no verdict on {len(missing)} prompt(s), not counted in the rates:"]
    for row in missing[:SHOWN_NO_VERDICTS]:
        for order, shown in (("b_second", "second"), ("b_first", "first")):
            if row.get(f"no_verdict_{order}"):
                asked = " ".join(row.get("last_turn", row["prompt"]).split())
                lines.append(f'  "{clip(asked, 60)}" ({result["b"]} shown {shown}): {row[f"no_verdict_{order}"]}')
    if len(missing) > SHOWN_NO_VERDICTS:
        lines.append(f"  ... and {len(missing) - SHOWN_NO_VERDICTS} more (each reply is in judge.json)")
    return lines


def result_table(result: dict) -> Table:
    table = Table(
        title=f"judge {result['judge']}: {result['b']} vs {result['a']} on {result['prompts']} prompt(s), both orders"
    )
    for col in ("outcome for " + result["b"], "count", "rate", "95% interval"):
        table.add_column(col, justify="left" if col.startswith("outcome") else "right")
    for k in ("win", "tie", "loss"):
        r = result["rates"][k]
        table.add_row(k, str(result["counts"][k]), f"{r['rate']:.1%}", f"{r['ci95'][0]:.1%} - {r['ci95'][1]:.1%}")
    if result["counts"]["invalid"]:
        table.add_row("no verdict", str(result["counts"]["invalid"]), "", "not counted")
    return table
