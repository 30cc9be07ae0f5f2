"""What each stage asks the teacher, and what it makes of the answers.

Every stage is two pure functions over the item list: `plan` lists the calls (with deterministic keys)
and `apply` builds the next item list from the journaled answers. Because both are pure, a resumed run
plans the very same calls, finds the finished ones in the journal and makes only the rest.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from phinetune.data.readers import source_rows
from phinetune.errors import DataError
from phinetune.synth.clean import clean_items, normalize_turn, split_lines
from phinetune.synth.config import SeedsConfig, SynthConfig
from phinetune.teachers.calls import Call
from phinetune.teachers.journal import Entry, call_hash, call_key
from phinetune.teachers.refusals import REFUSALS, is_refusal

ROLES = ("user", "assistant")
AUTO_FIELDS = ("question", "questions", "instruction", "prompt", "input", "text")


@dataclass
class Item:
    id: str
    origin: str  # "seed" or "synthetic"
    turns: list[str]  # alternating user / assistant, starting with the question
    candidates: list[str] = field(default_factory=list)  # the pairs stage's two sampled replies
    rejected: str | None = None  # after the judge: the losing reply (the winner is the last turn)

    def messages(self) -> list[dict]:
        return [{"role": ROLES[i % 2], "content": t} for i, t in enumerate(self.turns)]


@dataclass
class StageReport:
    kind: str
    items_in: int = 0
    items_out: int = 0
    calls: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, text: str) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(text[:160])


# --- seeds ----------------------------------------------------------------------------------------


def read_seeds(cfg: SeedsConfig) -> tuple[list[str], int]:
    """The seed texts and how many rows had none (empty or missing values are skipped, and counted)."""
    seeds, skipped = [], 0
    for row, where in source_rows(cfg.path):
        text = _seed_text(row, where, cfg.field)
        if text:
            seeds.append(text)
        else:
            skipped += 1
        if cfg.limit and len(seeds) >= cfg.limit:
            break
    if not seeds:
        raise DataError(f"{cfg.path}: no seed texts found (field '{cfg.field}')")
    return seeds, skipped


def _seed_text(row: dict, where: str, name: str) -> str | None:
    if name == "auto":
        return _auto_text(row, where)
    if name not in row:
        close = [k for k in row if str(k).lower() == name.lower()]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataError(f"{where}: no field '{name}' (fields: {sorted(map(str, row))}){hint}; set seeds.field")
    value = row[name]
    return value.strip() if isinstance(value, str) else None  # NaN from an empty CSV cell is a float


def _auto_text(row: dict, where: str) -> str | None:
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs:
        first = msgs[0]
        if isinstance(first, str):
            return first.strip()
        user = next((m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"), None)
        return user.strip() if isinstance(user, str) else None
    lower = {str(k).lower(): k for k in row}
    for name in AUTO_FIELDS:
        if name in lower:
            value = row[lower[name]]
            return value.strip() if isinstance(value, str) else None
    raise DataError(
        f"{where}: cannot tell which field holds the seed text (fields: {sorted(map(str, row))}); set seeds.field"
    )


def seed_items(seeds: list[str]) -> list[Item]:
    return [Item(f"seed-{n:05d}", "seed", [s]) for n, s in enumerate(seeds)]


# --- calls ----------------------------------------------------------------------------------------


def make_call(cfg: SynthConfig, stage_name: str, item: str, sample: int, messages: list[dict], stage) -> Call:
    if cfg.teacher.system:
        messages = [{"role": "system", "content": cfg.teacher.system}] + messages
    sampling = cfg.sampling_for(stage)
    seed = zlib.crc32(f"{cfg.seed}:{stage_name}:{item}:{sample}".encode())
    digest = call_hash(
        {
            "teacher": [cfg.teacher.kind, cfg.teacher.model],
            "messages": messages,
            "sampling": sampling.model_dump(),
            "seed": seed,
        }
    )
    return Call(call_key(stage_name, item, sample, digest), messages, sampling, seed)


def render_conversation(item: Item) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in item.messages())


# --- stages ---------------------------------------------------------------------------------------

Context = tuple[SynthConfig, str, list[str]]  # config, stage name, seeds


def plan_expand(stage, ctx: Context, items: list[Item]) -> list[tuple[str, Call]]:
    cfg, name, seeds = ctx
    calls = []
    for i in range(stage.calls):
        # A string-seeded Random is stable across processes and Python versions: the resumed run sees the same samples.
        shown = random.Random(f"{cfg.seed}:{name}:{i}").sample(seeds, min(stage.examples, len(seeds)))
        prompt = stage.prompt.format(examples="\n\n".join(shown), n=len(shown))
        calls.append((f"call-{i:05d}", make_call(cfg, name, "seeds", i, [{"role": "user", "content": prompt}], stage)))
    return calls


def apply_expand(
    stage, ctx: Context, items: list[Item], planned, answers: dict[str, Entry], report: StageReport
) -> list[Item]:
    _, name, seeds = ctx
    out = seed_items(seeds) if stage.keep_seeds else []
    for ident, call in planned:
        lines = split_lines(answers[call.key].text)
        if not lines:
            report.drop("empty_answer", answers[call.key].text)
        out += [Item(f"{name}-{ident[5:]}-{j:03d}", "synthetic", [line]) for j, line in enumerate(lines)]
    return out


def plan_clean(stage, ctx: Context, items: list[Item]) -> list[tuple[str, Call]]:
    return []


def apply_clean(stage, ctx: Context, items: list[Item], planned, answers, report: StageReport) -> list[Item]:
    kept, clean_report = clean_items([(it.id, it.turns[0], it.origin) for it in items], ctx[2], stage)
    report.removed, report.examples = clean_report.removed, clean_report.examples
    return [Item(ident, origin, [text]) for ident, text, origin in kept]


def assistant_messages(stage, item: Item) -> list[dict]:
    """The conversation the teacher answers: the last user turn wrapped in the stage's prompt, if it has one."""
    messages = item.messages()
    if stage.prompt is not None:
        messages[-1] = {"role": "user", "content": stage.prompt.format(message=messages[-1]["content"])}
    return messages


def plan_assistant(stage, ctx: Context, items: list[Item]) -> list[tuple[str, Call]]:
    cfg, name, _ = ctx
    return [(item.id, make_call(cfg, name, item.id, 0, assistant_messages(stage, item), stage)) for item in items]


def plan_user(stage, ctx: Context, items: list[Item]) -> list[tuple[str, Call]]:
    cfg, name, _ = ctx
    return [
        (
            it.id,
            make_call(
                cfg,
                name,
                it.id,
                0,
                [{"role": "user", "content": stage.prompt.format(conversation=render_conversation(it))}],
                stage,
            ),
        )
        for it in items
    ]


def apply_turn(
    stage, ctx: Context, items: list[Item], planned, answers: dict[str, Entry], report: StageReport
) -> list[Item]:
    """Append the teacher's turn to each conversation; drop the conversation when the turn is unusable."""
    out = []
    for item, (_, call) in zip(items, planned):
        raw = answers[call.key].text
        text = normalize_turn(raw) if stage.kind == "user" else raw.strip()
        reason = _turn_problem(text, stage)
        if reason:
            report.drop(reason, raw)
            continue
        out.append(Item(item.id, item.origin, item.turns + [text]))
    return out


def _turn_problem(text: str, stage) -> str | None:
    checks = (
        ("empty_turn", lambda t: not t),
        ("refusal", lambda t: is_refusal(t, REFUSALS)),
        ("too_long", lambda t: stage.kind == "user" and len(t) > stage.max_chars),
    )
    return next((name for name, bad in checks if bad(text)), None)


def plan_pairs(stage, ctx: Context, items: list[Item]) -> list[tuple[str, Call]]:
    """Two samples of the same conversation (call index 0 and 1: two seeds), for a judge to choose between."""
    cfg, name, _ = ctx
    return [
        (item.id, make_call(cfg, name, item.id, k, assistant_messages(stage, item), stage))
        for item in items
        for k in (0, 1)
    ]


def apply_pairs(
    stage, ctx: Context, items: list[Item], planned, answers: dict[str, Entry], report: StageReport
) -> list[Item]:
    out = []
    for k, item in enumerate(items):
        texts = [answers[planned[2 * k + j][1].key].text.strip() for j in (0, 1)]
        reason = next((r for r in map(lambda t: _turn_problem(t, stage), texts) if r), None)
        if reason is None and texts[0] == texts[1]:
            reason = "identical_replies"  # a pair with no difference teaches nothing
        if reason:
            report.drop(reason, texts[0])
            continue
        out.append(Item(item.id, item.origin, item.turns, candidates=texts))
    return out


def judge_order(cfg: SynthConfig, item: str) -> bool:
    """True when the second sample is shown as reply A (seeded per conversation, against position bias)."""
    return bool(zlib.crc32(f"{cfg.seed}:judge:{item}".encode()) & 1)


def plan_judge(stage, ctx: Context, items: list[Item]) -> list[tuple[str, Call]]:
    cfg, name, _ = ctx
    calls = []
    for item in items:
        a, b = item.candidates[::-1] if judge_order(cfg, item.id) else item.candidates
        prompt = stage.prompt.format(question=render_conversation(item), a=a, b=b)
        calls.append((item.id, make_call(cfg, name, item.id, 0, [{"role": "user", "content": prompt}], stage)))
    return calls


VERDICT = re.compile(r"\b([AB])\b")


def apply_judge(
    stage, ctx: Context, items: list[Item], planned, answers: dict[str, Entry], report: StageReport
) -> list[Item]:
    cfg = ctx[0]
    out = []
    for item, (_, call) in zip(items, planned):
        raw = answers[call.key].text
        letters = set(VERDICT.findall(raw))
        if len(letters) != 1:
            report.drop("judge_unclear", raw)  # neither or both letters: no verdict to trust
            continue
        shown = item.candidates[::-1] if judge_order(cfg, item.id) else item.candidates
        win = 0 if letters.pop() == "A" else 1
        out.append(Item(item.id, item.origin, item.turns + [shown[win]], rejected=shown[1 - win]))
    return out


Planner = Callable[..., list]
STAGES: dict[str, tuple[Planner, Callable[..., list[Item]]]] = {
    "expand": (plan_expand, apply_expand),
    "clean": (plan_clean, apply_clean),
    "assistant": (plan_assistant, apply_turn),
    "user": (plan_user, apply_turn),
    "pairs": (plan_pairs, apply_pairs),
    "judge": (plan_judge, apply_judge),
}
