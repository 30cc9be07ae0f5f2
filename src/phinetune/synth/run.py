"""`phinetune synth`: run the stages in order against the journal, then write conversations and stats."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from phinetune.progress import console, progress
from phinetune.synth.config import SynthConfig
from phinetune.synth.stages import STAGES, Item, StageReport, read_seeds, seed_items
from phinetune.teachers.calls import Call
from phinetune.teachers.journal import Entry, Journal

PREFERENCES = "preferences.jsonl"  # written when the recipe ends with pairs + judge stages


@dataclass
class Spend:
    """Tokens and cost over the whole journal (what this dataset has cost so far, resumed runs included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, e: Entry) -> None:
        self.prompt_tokens += e.prompt_tokens
        self.completion_tokens += e.completion_tokens
        self.cost += e.cost

    def line(self, retries: int) -> str:
        return f"tokens {_k(self.prompt_tokens)} in / {_k(self.completion_tokens)} out · ${self.cost:.4f} · {retries} retries"


@dataclass
class SynthResult:
    out_dir: Path
    conversations: int
    calls_made: int  # teacher calls made by this run (0 when everything was already journaled)
    calls_from_journal: int
    stats: dict = field(default_factory=dict)


class _Session:
    """The journal plus a teacher that is only built (a model loaded, a client opened) when a call is missing."""

    def __init__(self, cfg: SynthConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.journal = Journal(out / "journal.jsonl")
        self.teacher = None
        self.spend = Spend()
        for e in self.journal.entries.values():
            self.spend.add(e)

    def get_teacher(self):
        if self.teacher is None:
            from phinetune.teachers.make import make_teacher

            self.teacher = make_teacher(self.cfg.teacher)
        return self.teacher

    @property
    def retries(self) -> int:
        return self.teacher.counters.retries if self.teacher else 0

    def close(self) -> None:
        self.journal.close()
        if self.teacher is not None:
            self.teacher.close()


def run_synth(cfg: SynthConfig) -> SynthResult:
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, out)
    started = time.time()
    seeds, skipped = read_seeds(cfg.seeds)
    session = _Session(cfg, out)
    if session.journal.entries:
        console.print(
            f"resuming: {len(session.journal.entries)} teacher answers already in {session.journal.path}"
            + (" (a torn last line from a kill was cut off)" if session.journal.recovered_torn_line else "")
        )
    items, reports, made, reused = seed_items(seeds), {}, 0, 0
    try:
        for name, stage in cfg.stages.items():
            plan, apply = STAGES[stage.kind]
            report = StageReport(stage.kind, items_in=len(items))
            planned = plan(stage, (cfg, name, seeds), items)
            report.calls = len(planned)
            n_new = _call_missing(session, name, [c for _, c in planned])
            made, reused = made + n_new, reused + len(planned) - n_new
            answers = {c.key: session.journal.get(c.key) for _, c in planned}
            items = apply(stage, (cfg, name, seeds), items, planned, answers, report)
            report.items_out = len(items)
            reports[name] = report
    finally:
        session.close()
    stats = _stats(cfg, seeds, skipped, items, reports, session, made, reused, time.time() - started)
    _write_outputs(out, items, stats, reports)
    console.print(
        f"{len(items)} conversations -> {out / 'conversations.jsonl'}  ({made} teacher calls made, {reused} from the journal; "
        f"{session.spend.line(session.retries)})"
    )
    return SynthResult(out, len(items), made, reused, stats)


def _call_missing(session: _Session, name: str, calls: list[Call]) -> int:
    missing = [c for c in calls if c.key not in session.journal]
    if not calls:
        return 0
    with progress() as bar:
        task = bar.add_task(
            name, total=len(calls), completed=len(calls) - len(missing), info=session.spend.line(session.retries)
        )

        def on_done(call: Call, entry: Entry) -> None:
            session.journal.append(entry)  # on disk (fsynced) before anything else happens
            session.spend.add(entry)
            bar.update(task, advance=1, info=session.spend.line(session.retries))

        if missing:
            session.get_teacher().run(missing, on_done)
    return len(missing)


def _stats(
    cfg,
    seeds,
    skipped,
    items: list[Item],
    reports: dict[str, StageReport],
    session: _Session,
    made: int,
    reused: int,
    elapsed: float,
) -> dict:
    users = [t for it in items for t in it.turns[0::2]]
    assistants = [t for it in items for t in it.turns[1::2]]
    teacher = session.teacher
    return {
        "seeds": len(seeds),
        "seed_rows_skipped": skipped,
        "conversations": len(items),
        "by_origin": {o: sum(it.origin == o for it in items) for o in ("seed", "synthetic")},
        "turns_per_conversation": len(items[0].turns) if items else 0,
        "mean_chars": {"user": _mean(users), "assistant": _mean(assistants)},
        "teacher": {"kind": cfg.teacher.kind, "model": cfg.teacher.model},
        "calls": {
            "made_this_run": made,
            "from_journal": reused,
            "retries_this_run": session.retries,
            "errors_this_run": teacher.counters.errors if teacher else {},
        },
        "spend_total": asdict(session.spend),
        "stages": {name: asdict(r) for name, r in reports.items()},
        "elapsed_s": round(elapsed, 2),
    }


def _write_outputs(out: Path, items: list[Item], stats: dict, reports: dict[str, StageReport]) -> None:
    rows = [
        json.dumps({"id": it.id, "origin": it.origin, "messages": it.messages()}, ensure_ascii=False) for it in items
    ]
    _atomic_write(out / "conversations.jsonl", "".join(r + "\n" for r in rows))
    if any(it.rejected is not None for it in items):
        # TRL's conversational preference layout: what `train.objective: dpo` reads as is (data/preference.py).
        prefs = [
            json.dumps(
                {
                    "id": it.id,
                    "origin": it.origin,
                    "prompt": it.messages()[:-1],
                    "chosen": [{"role": "assistant", "content": it.turns[-1]}],
                    "rejected": [{"role": "assistant", "content": it.rejected}],
                },
                ensure_ascii=False,
            )
            for it in items
        ]
        _atomic_write(out / PREFERENCES, "".join(r + "\n" for r in prefs))
    _atomic_write(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    cleaning = {
        name: {"removed": r.removed, "examples": r.examples, "items_in": r.items_in, "items_out": r.items_out}
        for name, r in reports.items()
    }
    _atomic_write(out / "clean_report.json", json.dumps(cleaning, indent=2, ensure_ascii=False) + "\n")


def _save_config(cfg: SynthConfig, out: Path) -> None:
    _atomic_write(
        out / "synth_config.yaml",
        yaml.safe_dump(cfg.model_dump(mode="json", exclude={"teacher": {"api_key"}}), sort_keys=False),
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _mean(texts: list[str]) -> float:
    return round(sum(map(len, texts)) / len(texts), 1) if texts else 0.0


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)
