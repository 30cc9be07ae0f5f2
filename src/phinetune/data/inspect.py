"""`phinetune data inspect`: what the model will actually see and learn from, before any training.

Counts, a token-length histogram (PNG and text), the share of tokens trained, the share truncated, a few
rendered samples with their masks, and the duplicates found. Uses the same reader and renderer as
training, so what it shows is what `train` will do with the same settings.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from phinetune.charts import Panel, save
from phinetune.config.schema import DataConfig, ModelConfig, PreflightConfig
from phinetune.data.coverage import Coverage, add_sample
from phinetune.data.dataset import find_duplicates, render_at
from phinetune.data.readers import ReadReport, Record, read_records
from phinetune.data.reasoning import trace_positions
from phinetune.data.render import IGNORE, Rendered
from phinetune.errors import PhinetuneError
from phinetune.models.specs import GENERIC
from phinetune.progress import console, track

# Chat markup inside plain-text rows: as `text` every token of it (user turns included) is trained.
CHAT_MARKERS = re.compile(r"<\|(user|assistant|system|im_start)\|>|### (Human|Assistant):")


@dataclass
class Inspection:
    source: str
    format: str
    settings: dict
    read_summary: str
    records: int
    samples: list[tuple[Record, Rendered]]
    duplicates: list[tuple[str, str]]
    lengths: list[int] = field(default_factory=list)  # tokens per sample before truncation
    tokens: int = 0  # tokens kept after truncation
    trained: int = 0
    truncated: int = 0
    lost_tokens: int = 0  # tokens cut by truncation
    empty_where: list[str] = field(default_factory=list)
    eot_trained: float | None = None  # share of chat samples whose last end-of-turn token is trained
    coverage: Coverage = field(default_factory=Coverage)  # per turn, the same counts as the pre-flight
    trace_trained: int = 0  # trained tokens inside reasoning traces (<think>...</think>)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        n = max(len(self.lengths), 1)
        return {
            "source": self.source,
            "format": self.format,
            "records": self.records,
            "settings": self.settings,
            "duplicates": len(self.duplicates),
            "tokens": self.tokens,
            "trained_tokens": self.trained,
            "trained_share": round(self.trained / max(self.tokens, 1), 4),
            "reasoning_trained_tokens": self.trace_trained,
            "reasoning_share_of_trained": round(self.trace_trained / max(self.trained, 1), 4),
            "truncated_samples": self.truncated,
            "truncated_share": round(self.truncated / n, 4),
            "tokens_lost_to_truncation": self.lost_tokens,
            "length": _stats(self.lengths),
            "empty_samples": self.empty_where,
            "eot_trained_share": self.eot_trained,
            "end_of_turn": self.coverage.summary(),
            "read_summary": self.read_summary,
            "warnings": self.warnings,
        }


def _stats(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731 (nearest-rank percentile)
    return {
        "min": s[0],
        "median": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": s[-1],
        "mean": round(sum(s) / len(s), 1),
    }


def inspect_data(cfg: DataConfig, tokenizer, eot: str, n_samples: int = 3, spec=None) -> Inspection:
    report = ReadReport()
    records = read_records(cfg.train, cfg.format, cfg.columns, cfg.skip_bad_rows, cfg.limit, report, cfg.split)
    settings = {"max_length": cfg.max_length, "mask": cfg.mask, "eot": eot, "reasoning": cfg.reasoning}
    tags = (spec or GENERIC).reasoning_tags
    out = Inspection(cfg.train, report.format, settings, report.summary(), len(records), [], find_duplicates(records))
    for rec in track(records, "Tokenizing"):
        r = render_at(rec, tokenizer, cfg, eot, spec)
        if "messages" in rec.sample:
            out.trace_trained += len(trace_positions(r, tokenizer, tags))
        out.lengths.append(r.full_length)
        out.tokens += len(r.input_ids)
        out.trained += r.n_trained
        out.truncated += r.truncated
        out.lost_tokens += r.full_length - len(r.input_ids)
        if r.n_trained == 0:
            out.empty_where.append(rec.where)
        add_sample(out.coverage, r, cfg.mask, eot)
        if len(out.samples) < n_samples:
            out.samples.append((rec, r))
    out.eot_trained = round(out.coverage.last_eot_share, 4) if out.coverage.chat_samples else None
    out.warnings = _warnings(out, records, cfg)
    return out


def _warnings(ins: Inspection, records: list[Record], cfg: DataConfig) -> list[str]:
    warns = []
    marked = [r.where for r in records if "text" in r.sample and CHAT_MARKERS.search(r.sample["text"])]
    if marked:
        warns.append(
            f"{len(marked)} plain-text row(s) contain chat markup (e.g. {marked[0]}); as `text` every token is trained, "
            "user turns included; convert them to messages for assistant-only loss"
        )
    if ins.empty_where:
        warns.append(
            f"{len(ins.empty_where)} sample(s) have no trained tokens at max_length={cfg.max_length} "
            f"(e.g. {', '.join(ins.empty_where[:3])}); training refuses them unless preflight.allow_empty_samples"
        )
    cov, floor = ins.coverage, PreflightConfig().min_eot_share
    warns += [f"mask violation: {v}" for v in cov.violations[:5]]
    if cov.turns_without_eot:
        warns.append(
            f"{len(cov.turns_without_eot)} assistant turn(s) end without the end-of-turn token {ins.settings['eot']} "
            f"(e.g. {cov.turns_without_eot[0]})"
        )
    if ins.eot_trained is not None and ins.eot_trained < 1.0:
        warns.append(
            f"the last end-of-turn token is trained in only {ins.eot_trained:.0%} of conversations at max_length={cfg.max_length}"
            + (
                f"; training refuses below {floor:.0%} (preflight.min_eot_share): max_length={cov.max_length_for(floor)} keeps {floor:.0%}"
                if ins.eot_trained < floor
                else ""
            )
        )
    return warns


# ---------------------------------------------------------------- the verb: its flags for data.* keys

# data.* fields as `phinetune data inspect` spells them: its errors name these, not the run config's keys.
DATA_FLAGS = {
    "train": "DATA",
    "format": "--format",
    "columns": "--column",
    "max_length": "--max-length",
    "mask": "--mask",
    "reasoning": "--reasoning",
    "split": "--split",
    "limit": "--limit",
    "skip_bad_rows": "--skip-bad-rows",
    "fold_system": "--fold-system",
}
INSPECT_FLAGS = {"data.train / data.eval": "DATA", **{f"data.{key}": flag for key, flag in DATA_FLAGS.items()}}


def as_inspect_flags(message: str) -> str:
    """A reader's sentence (it speaks config keys) in this verb's flags; longer keys first (data.train / data.eval)."""
    for key in sorted(INSPECT_FLAGS, key=len, reverse=True):
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(?!\w)", INSPECT_FLAGS[key], message)
    return message


def report_data(
    cfg: DataConfig, model: str, spec_key: str | None = None, samples: int = 3, out: Path = Path("data-inspect")
) -> Inspection:
    """`phinetune data inspect`: inspect `cfg` with --model's tokenizer and template, write OUT's files, print it all."""
    tokenizer, eot = load_inspect_tokenizer(model, spec_key)
    try:
        ins = inspect_data(cfg, tokenizer, eot, samples, inspect_spec(model, spec_key))
    except PhinetuneError as exc:  # the readers speak config keys; this verb's user typed flags
        raise PhinetuneError(as_inspect_flags(str(exc))) from None
    print_inspection(ins, tokenizer, write_outputs(ins, tokenizer, out))
    return ins


# ---------------------------------------------------------------- tokenizer for a model name


def load_inspect_tokenizer(model: str, spec_key: str | None = None):
    """(tokenizer, end-of-turn token) for a tiny-* name, a Hub id in the local cache, or a local folder."""
    from phinetune.data.end_of_turn import end_of_turn
    from phinetune.models.loading import load_tokenizer
    from phinetune.models.specs import SPECS, TINY_MODELS

    spec = inspect_spec(model, spec_key)
    cfg = ModelConfig(name=model, spec=spec_key)
    if model in TINY_MODELS:
        from phinetune.models.tiny import build_tokenizer

        with tempfile.TemporaryDirectory() as tmp:  # through load_tokenizer, so Phi-2's added tokens apply
            build_tokenizer(SPECS[TINY_MODELS[model]]).save_pretrained(tmp)
            tokenizer = load_tokenizer(tmp, cfg, spec)
    else:
        tokenizer = load_tokenizer(model, cfg, spec)
    return tokenizer, end_of_turn(tokenizer, spec)


def inspect_spec(model: str, spec_key: str | None = None):
    """The spec for --model: by name, else from a local folder's config.json."""
    from phinetune.models.specs import get_spec, spec_from_config

    spec = get_spec(model, spec_key)
    config = Path(model).expanduser() / "config.json"
    if spec.key == "generic" and config.exists():
        spec = spec_from_config(json.loads(config.read_text()))
    return spec


# ---------------------------------------------------------------- output


def text_histogram(lengths: list[int], max_length: int, bins: int = 12, width: int = 40) -> str:
    if not lengths:
        return "(no samples)"
    top = max(max(lengths), 1)
    step = max(1, -(-top // bins))
    counts = [0] * (-(-(top + 1) // step))
    for n in lengths:
        counts[n // step] += 1
    peak = max(counts)
    lines = []
    for i, c in enumerate(counts):
        lo, hi = i * step, (i + 1) * step - 1
        flag = "  > max_length" if lo > max_length else ""
        lines.append(f"{lo:>7}-{hi:<7} {'#' * round(width * c / peak):<{width}} {c}{flag}")
    return "\n".join(lines)


def save_histogram_png(lengths: list[int], max_length: int, path: Path) -> Path:
    panel = Panel(
        "Token lengths",
        "tokens per sample (before truncation)",
        "samples",
        values=lengths,
        marks=((max_length, f"max_length={max_length}"),),
    )
    return save([panel], path, size=(7, 4))


def mask_segments(rendered: Rendered, tokenizer) -> list[tuple[str, bool]]:
    """(text, trained) runs; decoded per run, not per token, so multi-byte characters stay whole."""
    runs: list[tuple[list[int], bool]] = []
    for tid, label in zip(rendered.input_ids, rendered.labels):
        trained = label != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tid)
        else:
            runs.append(([tid], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in runs]


def mask_plain(rendered: Rendered, tokenizer) -> str:
    """The sample with trained text between [[ and ]]."""
    return "".join(f"[[{t}]]" if trained else t for t, trained in mask_segments(rendered, tokenizer))


def mask_rich(rendered: Rendered, tokenizer) -> Text:
    out = Text()
    for t, trained in mask_segments(rendered, tokenizer):
        out.append(f"[[{t}]]" if trained else t, style="bold green" if trained else "dim")
    return out


def write_outputs(ins: Inspection, tokenizer, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out_dir / "report.json",
        "histogram_png": out_dir / "lengths.png",
        "histogram_txt": out_dir / "lengths.txt",
        "samples": out_dir / "samples.txt",
    }
    paths["report"].write_text(
        json.dumps({**ins.summary(), "duplicate_pairs": ins.duplicates}, indent=2, ensure_ascii=False)
    )
    save_histogram_png(ins.lengths, ins.settings["max_length"], paths["histogram_png"])
    paths["histogram_txt"].write_text(text_histogram(ins.lengths, ins.settings["max_length"]) + "\n")
    paths["samples"].write_text(
        "\n\n".join(
            f"--- {rec.where} ({len(r.input_ids)} tokens, {r.n_trained} trained)\n{mask_plain(r, tokenizer)}"
            for rec, r in ins.samples
        )
        + "\n"
    )
    return paths


def print_inspection(ins: Inspection, tokenizer, paths: dict[str, Path]) -> None:
    s = ins.summary()
    console.rule(Text(f"data inspect: {ins.source}", style="bold"))
    console.print(
        f"format: {ins.format}   records: {ins.records}   duplicates: {s['duplicates']}   "
        f"mask: {ins.settings['mask']}   max_length: {ins.settings['max_length']}   end-of-turn: {ins.settings['eot']}",
        highlight=False,
    )
    if ins.read_summary:
        console.print(ins.read_summary, style="yellow", highlight=False)
    for dup, first in ins.duplicates[:3]:
        console.print(f"  duplicate: {dup} repeats {first}", highlight=False)
    console.print(
        f"tokens: {s['tokens']:,} kept, {s['trained_tokens']:,} trained ({s['trained_share']:.1%})   "
        f"truncated: {s['truncated_samples']} sample(s) ({s['truncated_share']:.1%}), {s['tokens_lost_to_truncation']:,} tokens cut",
        highlight=False,
    )
    console.print(
        f"reasoning traces: {s['reasoning_trained_tokens']:,} trained tokens inside <think>...</think> "
        f"({s['reasoning_share_of_trained']:.1%} of trained tokens; data.reasoning={ins.settings['reasoning']})",
        highlight=False,
    )
    console.print(f"length (tokens, before truncation): {s['length']}", highlight=False)
    cov = ins.coverage
    if cov.chat_samples:
        console.print(
            f"end-of-turn {ins.settings['eot']}: own token trained in {cov.turns_eot_trained}/{cov.turns} assistant turns"
            f"{f' ({cov.turns_cut} cut by max_length)' if cov.turns_cut else ''}; last one kept in "
            f"{cov.last_eot_trained}/{cov.chat_samples} chat samples; {len(cov.violations)} mask violation(s)",
            highlight=False,
        )
    console.print(text_histogram(ins.lengths, ins.settings["max_length"]), highlight=False, markup=False)
    for rec, r in ins.samples:
        console.print(
            f"--- {rec.where} ({len(r.input_ids)} tokens, {r.n_trained} trained; trained text in [[ ]])",
            highlight=False,
        )
        console.print(mask_rich(r, tokenizer))
    for w in ins.warnings:
        console.print(f"warning: {w}", style="yellow", highlight=False)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}", highlight=False)
