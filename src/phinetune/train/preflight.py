"""The pre-flight: prove the run trains what the user thinks it trains, before spending GPU time.

Refuses (unless explicitly overridden in `preflight.*`): a LoRA target that matches nothing, samples with
no trained tokens, and an end-of-turn token that is never trained (the model would never learn to stop).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from rich.text import Text

from phinetune.config import RunConfig
from phinetune.data.dataset import PreparedData
from phinetune.data.render import IGNORE, Rendered
from phinetune.errors import PreflightError
from phinetune.models.specs import ModelSpec
from phinetune.progress import console
from phinetune.train.adapter import resolve_targets, trainable_counts


@dataclass
class PreflightReport:
    matches: dict[str, list[str]] = field(default_factory=dict)  # pattern -> matched module/param names
    trainable: int = 0
    total: int = 0
    eot_trained: bool = True
    empty_samples: int = 0
    problems: list[str] = field(default_factory=list)


def target_matches(model, patterns: list[str], parameters: list[str]) -> dict[str, list[str]]:
    """Which adapted modules / parameters each pattern ended up on (read back from the PEFT model)."""
    found: dict[str, list[str]] = defaultdict(list)
    names = [n for n, _ in model.named_modules()]
    for pattern in patterns:
        found[pattern] = [n for n in names if n.endswith("." + pattern) and _has_lora(model, n)]
    param_names = [n for n, _ in model.named_parameters()] + names
    for pattern in parameters:
        found[pattern] = sorted({n for n in names if n.endswith(pattern.rsplit(".", 1)[0]) and _has_lora(model, n)}
                                | {n for n in param_names if pattern in n and "lora" in n})
    return dict(found)


def _has_lora(model, name: str) -> bool:
    module = model.get_submodule(name)
    return hasattr(module, "lora_A") or hasattr(module, "lora_B")


def check(cfg: RunConfig, spec: ModelSpec, model, tokenizer, data: PreparedData) -> PreflightReport:
    report = PreflightReport()
    report.trainable, report.total = trainable_counts(model)
    if cfg.adapter.method == "lora":
        targets = resolve_targets(spec, cfg.adapter)
        patterns = [] if targets.modules == ["all-linear"] else targets.modules
        report.matches = target_matches(model, patterns, targets.parameters)
        for pattern, hits in report.matches.items():
            if not hits and not cfg.preflight.allow_unmatched_targets:
                report.problems.append(_unmatched_message(pattern, spec))
    eot = spec.end_of_turn or tokenizer.eos_token
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    has_chat = any("messages" in r.sample for r in data.train_records)
    report.eot_trained = (not has_chat) or any(eot_id in r.labels for r in data.train)
    if not report.eot_trained and not cfg.preflight.allow_untrained_eot:
        report.problems.append(f"the end-of-turn token {eot} is never trained, so the model would never learn to stop; check the chat template and data.mask (override: preflight.allow_untrained_eot=true)")
    report.empty_samples = data.info.empty
    if report.empty_samples and not cfg.preflight.allow_empty_samples:
        where = ", ".join(data.info.empty_where[:5]) + (", ..." if len(data.info.empty_where) > 5 else "")
        report.problems.append(f"{report.empty_samples} sample(s) have no trained tokens after masking/truncation at data.max_length={cfg.data.max_length} ({where}); raise max_length or fix the data (override: preflight.allow_empty_samples=true)")
    if not data.train:
        report.problems.append("no training sample has a trained token")
    return report


def _unmatched_message(pattern: str, spec: ModelSpec) -> str:
    preset = spec.lora_presets.get("all-linear")
    right = ", ".join((preset.modules + preset.parameters) if preset else ())
    return f"LoRA target '{pattern}' matches nothing in {spec.key}; its real names are: {right} (override: preflight.allow_unmatched_targets=true)"


def show_mask(rendered: Rendered, tokenizer) -> Text:
    """The sample as text with trained tokens highlighted (green) and the rest dimmed."""
    out = Text()
    for tid, label in zip(rendered.input_ids, rendered.labels):
        piece = tokenizer.decode([tid])
        out.append(piece, style="bold green" if label != IGNORE else "dim")
    return out


def print_report(report: PreflightReport, cfg: RunConfig, spec: ModelSpec, data: PreparedData, tokenizer, dtype) -> None:
    console.rule("[bold]pre-flight")
    console.print(f"model spec: {spec.key}   method: {cfg.adapter.method}   dtype: {dtype.name} ({dtype.reason})   quant: {cfg.model.quant}")
    for pattern, hits in report.matches.items():
        console.print(f"  target {pattern!r}: {len(hits)} match(es)" + (f", e.g. {hits[0]}" if hits else "  [red]NONE[/red]"))
    share = 100.0 * report.trainable / max(report.total, 1)
    console.print(f"trainable parameters: {report.trainable:,} of {report.total:,} ({share:.2f}%)")
    console.print(f"data: {data.info.read} read, {data.info.duplicates} duplicates removed, {len(data.info.skipped)} skipped, "
                  f"{data.info.train} train / {data.info.eval} eval, {data.info.truncated} truncated"
                  + (" (tokenized data from cache)" if data.info.cached else ""))
    if data.info.read_summary:
        console.print(f"[yellow]{data.info.read_summary}[/yellow]")
    console.print(f"end-of-turn token trained: {'yes' if report.eot_trained else '[red]NO[/red]'}")
    if data.train:
        console.print("one sample, trained tokens in green:")
        console.print(show_mask(data.train[0], tokenizer))


def run_preflight(cfg, spec, model, tokenizer, data, dtype, verbose: bool = True) -> PreflightReport:
    report = check(cfg, spec, model, tokenizer, data)
    if verbose:
        print_report(report, cfg, spec, data, tokenizer, dtype)
    if report.problems:
        raise PreflightError("pre-flight failed:\n  " + "\n  ".join(report.problems))
    return report
