"""Preference data: read, validate and render pairs (DPO, IPO, ORPO, SimPO) and unpaired samples (KTO).

Layouts read (each row normalised to a prompt conversation plus one or two assistant replies):

    {"prompt": str | [turns], "chosen": str | [turns], "rejected": str | [turns]}   TRL (plain or conversational)
    {"messages": [turns], "chosen": str, "rejected": str}                           a conversation to continue
    {"chosen": [user.., assistant], "rejected": [user.., assistant]}                UltraFeedback (full conversations,
                                                                                     shared prefix = the prompt)
    {"chosen": "\\n\\nHuman: ..\\n\\nAssistant: ..", "rejected": "..."}                Anthropic HH (text transcripts)
    {"prompt": str | [turns], "completion": str | [turns], "label": bool}           KTO (unpaired)

Rendering: prompt + chosen and prompt + rejected go through the model's own chat template separately
(render.render_sample with mask=last_assistant, so each reply's end-of-turn token is trained). The prompt
part, every token before the first trained one, must then be identical token for token in both: it is
checked here (a template or tokenizer merge across the boundary would make the two log-probabilities
condition on different prompts), and a pair where it is not is refused with its file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from phinetune.data.formats import GUANACO_ROLES, ROLES, RowError
from phinetune.data.normalize import for_template
from phinetune.data.readers import ReadReport, Record, source_rows
from phinetune.data.render import IGNORE, Rendered, render_sample
from phinetune.errors import DataError
from phinetune.models.specs import ModelSpec

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
PAIRED, UNPAIRED = "pairs", "kto"
# The preference objectives and the data each reads (`data inspect --objective`)
OBJECTIVE_DATA = {"dpo": PAIRED, "ipo": PAIRED, "orpo": PAIRED, "simpo": PAIRED, "kto": UNPAIRED}


@dataclass
class PrefRecord:
    prompt: list[dict]  # the conversation so far, ending on a user turn
    chosen: str  # for KTO: the completion
    rejected: str | None  # None for KTO
    where: str
    desirable: bool = True  # KTO label


@dataclass
class PrefSample:
    """One rendered pair (or, for KTO, a completion and its mismatched-prompt twin used for the KL estimate)."""

    chosen: Rendered
    rejected: Rendered
    prompt_tokens: int
    where: str
    desirable: bool = True


@dataclass
class PrefInfo:
    read: int = 0
    kind: str = PAIRED
    skipped: list[str] = field(default_factory=list)
    truncated: int = 0
    identical: int = 0  # pairs whose chosen and rejected replies are the same text (they teach nothing)
    duplicates: int = 0


# ---------------------------------------------------------------- reading


def _turns(value, where: str, name: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(where, f"empty field '{name}'", f"field '{name}' is empty; expected non-empty text")
        return [{"role": "assistant" if name != "prompt" else "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError(
            where,
            f"wrong type in '{name}'",
            f"field '{name}' must be a string or a non-empty list of {{role, content}} turns, got {type(value).__name__}",
        )
    out = []
    for i, t in enumerate(value):
        if (
            not isinstance(t, dict)
            or t.get("role") not in ROLES
            or not isinstance(t.get("content"), str)
            or not t["content"].strip()
        ):
            raise RowError(
                where,
                "bad turn",
                f"field '{name}[{i}]' must be {{role: system|user|assistant, content: non-empty str}}, got {t!r:.80}",
            )
        out.append({"role": t["role"], "content": t["content"]})
    return out


def _hh(text: str, where: str, name: str) -> list[dict]:
    parts = HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    if len(parts) < 3:
        raise RowError(where, "no HH turns", f"field '{name}' has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return [{"role": GUANACO_ROLES[w], "content": b.strip()} for w, b in zip(parts[1::2], parts[2::2])]


def _reply(turns: list[dict], where: str, name: str) -> str:
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise RowError(
            where,
            f"'{name}' is not one reply",
            f"field '{name}' must be one assistant reply after the prompt, got {len(turns)} turn(s) ending with {turns[-1]['role']}",
        )
    return turns[0]["content"]


def _check_prompt(prompt: list[dict], where: str) -> list[dict]:
    body = [m["role"] for m in prompt if m["role"] != "system"]
    if not body or body[-1] != "user":
        raise RowError(
            where, "prompt does not end on a user turn", "the prompt must end with a user turn (the replies answer it)"
        )
    return prompt


def pair_from_row(row: dict, where: str) -> PrefRecord:
    if "chosen" not in row or "rejected" not in row:
        raise RowError(
            where,
            "missing chosen/rejected",
            f"a preference row needs 'chosen' and 'rejected' (fields present: {', '.join(sorted(row)) or 'none'})",
        )
    chosen, rejected = row["chosen"], row["rejected"]
    prompt_field = row.get("prompt", row.get("messages"))
    if prompt_field is None and isinstance(chosen, str) and isinstance(rejected, str):
        chosen, rejected = _hh(chosen, where, "chosen"), _hh(rejected, where, "rejected")
    c, r = _turns(chosen, where, "chosen"), _turns(rejected, where, "rejected")
    if prompt_field is None or (len(c) > 1 and len(r) > 1):
        # Full conversations (UltraFeedback, HH): the shared prefix is the prompt, the last turn the reply.
        if c[:-1] != r[:-1]:
            raise RowError(
                where,
                "chosen and rejected differ before the reply",
                "'chosen' and 'rejected' must share every turn but the last (the prompt)",
            )
        prompt, c, r = c[:-1], c[-1:], r[-1:]
    else:
        prompt = _turns(prompt_field, where, "prompt")
    return PrefRecord(_check_prompt(prompt, where), _reply(c, where, "chosen"), _reply(r, where, "rejected"), where)


def unpaired_from_row(row: dict, where: str) -> PrefRecord:
    for name in ("prompt", "completion", "label"):
        if name not in row:
            raise RowError(
                where,
                f"missing field '{name}'",
                f"a KTO row needs prompt, completion and label (fields present: {', '.join(sorted(row))})",
            )
    if not isinstance(row["label"], bool):
        raise RowError(
            where,
            "label is not a boolean",
            f"field 'label' must be true (desirable) or false (undesirable), got {row['label']!r:.40}",
        )
    prompt = _turns(row["prompt"], where, "prompt")
    return PrefRecord(
        _check_prompt(prompt, where),
        _reply(_turns(row["completion"], where, "completion"), where, "completion"),
        None,
        where,
        desirable=row["label"],
    )


def read_preferences(
    source: str,
    kind: str,
    skip_bad: bool = False,
    limit: int | None = None,
    split: str = "train",
    report: ReadReport | None = None,
) -> list[PrefRecord]:
    convert = unpaired_from_row if kind == UNPAIRED else pair_from_row
    report = report if report is not None else ReadReport()
    out: list[PrefRecord] = []
    for row, where in source_rows(source, split):
        try:
            if isinstance(row, RowError):
                raise row
            out.append(convert(row, where))
        except RowError as exc:
            if not skip_bad:
                raise
            report.skip(exc)
        if limit and len(out) >= limit:
            break
    report.read += len(out)
    report.format = kind
    if not out:
        raise DataError(
            f"{source}: no usable preference records" + (f" ({report.summary()})" if report.skipped else "")
        )
    if kind == UNPAIRED and len({r.desirable for r in out}) < 2:
        raise DataError(
            f"{source}: every KTO row has label={out[0].desirable}; KTO needs both desirable and undesirable examples"
        )
    return out


# ---------------------------------------------------------------- rendering


def in_template_form(records: list[PrefRecord], spec: ModelSpec) -> list[PrefRecord]:
    """The prompts written as SFT and inference write them (data/normalize.py: the spec's default system prompt,
    its tool format), so a preference-tuned model is trained on the prompts it will be asked."""
    return [replace(r, prompt=for_template({"messages": r.prompt}, spec)["messages"]) for r in records]


def prompt_length(r: Rendered) -> int:
    """Tokens before the first trained one: the part both replies must share."""
    return next((i for i, x in enumerate(r.labels) if x != IGNORE), len(r.labels))


def render_pair(tokenizer, prompt: list[dict], a: str, b: str, where: str, max_length: int, eot: str) -> PrefSample:
    try:
        ra = render_sample(
            tokenizer, {"messages": prompt + [{"role": "assistant", "content": a}]}, max_length, "last_assistant", eot
        )
        rb = render_sample(
            tokenizer, {"messages": prompt + [{"role": "assistant", "content": b}]}, max_length, "last_assistant", eot
        )
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    pa, pb = prompt_length(ra), prompt_length(rb)
    if pa != pb or ra.input_ids[:pa] != rb.input_ids[:pb]:
        first = next((i for i, (x, y) in enumerate(zip(ra.input_ids, rb.input_ids)) if x != y), min(pa, pb))
        raise DataError(
            f"{where}: the prompt renders to different tokens before the chosen and the rejected reply "
            f"(they differ at token {first}: {tokenizer.decode(ra.input_ids[first : first + 3])!r} vs "
            f"{tokenizer.decode(rb.input_ids[first : first + 3])!r}); the two log-probabilities would not share a prompt"
        )
    return PrefSample(ra, rb, pa, where)


def render_preferences(
    records: list[PrefRecord], tokenizer, max_length: int, eot: str, info: PrefInfo
) -> list[PrefSample]:
    """Rendered samples; a pair whose replies were truncated away entirely is counted and left out."""
    out = []
    for i, rec in enumerate(records):
        if rec.rejected is None:
            # KTO: the second sequence is the same prompt with another row's completion, for the KL estimate
            # (as TRL's KTOTrainer does within its batch; here the partner is the next record).
            other = records[(i + 1) % len(records)].chosen
            sample = render_pair(tokenizer, rec.prompt, rec.chosen, other, rec.where, max_length, eot)
            sample.desirable = rec.desirable
        else:
            sample = render_pair(tokenizer, rec.prompt, rec.chosen, rec.rejected, rec.where, max_length, eot)
            info.identical += rec.chosen.strip() == rec.rejected.strip()
        info.truncated += sample.chosen.truncated or sample.rejected.truncated
        if sample.chosen.n_trained == 0 or sample.rejected.n_trained == 0:
            info.skipped.append(f"{rec.where}: no reply token left after truncation to data.max_length={max_length}")
            continue
        out.append(sample)
    return out


def as_sft_records(records: list[PrefRecord]) -> list[Record]:
    """Chosen (or desirable) replies as SFT conversations: what the pre-flight's mask checks read."""
    return [Record({"messages": r.prompt + [{"role": "assistant", "content": r.chosen}]}, r.where) for r in records]


def overlap(a: str, b: str) -> float:
    """Share of word tokens two replies have in common (Jaccard): near 1 means the pair barely differs."""
    wa, wb = set(a.lower().split()), set(b.lower().split())
    return len(wa & wb) / max(len(wa | wb), 1)


# ---------------------------------------------------------------- inspection


def inspect_preferences(
    source: str,
    kind: str,
    tokenizer,
    max_length: int,
    eot: str,
    limit: int | None = None,
    skip_bad: bool = False,
    split: str = "train",
    spec: ModelSpec | None = None,
) -> dict:
    """What `data inspect --objective dpo|kto` reports: reply lengths, length bias, overlap, truncation, with the
    prompts in the form training renders them (`spec`)."""
    from phinetune.data.inspect import _stats

    report = ReadReport()
    records = read_preferences(source, kind, skip_bad, limit, split, report)
    records = in_template_form(records, spec) if spec is not None else records
    info = PrefInfo(read=len(records), kind=kind)
    samples = render_preferences(records, tokenizer, max_length, eot, info)
    chosen = [s.chosen.n_trained for s in samples]
    out = {
        "source": source,
        "kind": kind,
        "records": len(records),
        "usable": len(samples),
        "read_summary": report.summary(),
        "truncated": info.truncated,
        "dropped": info.skipped,
        "prompt_tokens": _stats([s.prompt_tokens for s in samples]),
        "prompt_identical_token_for_token": len(samples),
    }  # render_pair refuses any pair where it is not
    if kind == UNPAIRED:
        out["desirable"] = sum(r.desirable for r in records)
        out["undesirable"] = len(records) - out["desirable"]
        out["completion_tokens"] = _stats(chosen)
        return out
    rejected = [s.rejected.n_trained for s in samples]
    overlaps = [overlap(r.chosen, r.rejected) for r in records]
    out.update(
        chosen_tokens=_stats(chosen),
        rejected_tokens=_stats(rejected),
        chosen_longer_share=round(sum(c > r for c, r in zip(chosen, rejected)) / max(len(samples), 1), 4),
        word_overlap=_stats([round(o, 3) for o in overlaps]) if overlaps else {},
        identical_pairs=info.identical,
    )
    return out


def report_preferences(
    source: str,
    objective: str,
    model: str,
    spec_key: str | None,
    max_length: int,
    limit: int | None,
    skip_bad: bool,
    split: str,
    out: Path,
) -> dict:
    """`data inspect --objective dpo|kto ...`: `inspect_preferences` with --model's tokenizer, written to OUT/report.json
    and printed."""
    import json

    from phinetune.data.inspect import inspect_spec, load_inspect_tokenizer
    from phinetune.progress import console

    if objective not in OBJECTIVE_DATA:
        raise DataError(f"--objective {objective}: expected sft, {', '.join(OBJECTIVE_DATA)}")
    tokenizer, eot = load_inspect_tokenizer(model, spec_key)
    stats = inspect_preferences(
        source,
        OBJECTIVE_DATA[objective],
        tokenizer,
        max_length,
        eot,
        limit,
        skip_bad,
        split,
        inspect_spec(model, spec_key),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    console.rule(f"[bold]data inspect ({objective}): {source}")
    for key, value in stats.items():
        if key not in ("source", "dropped") and value not in ({}, "", []):
            console.print(f"{key}: {value}", highlight=False)
    for line in stats["dropped"][:5]:
        console.print(f"dropped: {line}", style="yellow", highlight=False)
    console.print(f"written: {out / 'report.json'}", highlight=False)
    return stats
