"""The pre-flight: prove the run trains what the user thinks it trains, before spending GPU time.

Refuses (unless explicitly overridden in `preflight.*`): a LoRA target that matches nothing, samples with
no trained tokens, an end-of-turn token that is never trained (the model would never learn to stop), fewer
than preflight.min_eot_share of the chat samples keeping their last end-of-turn token after truncation
(naming the max_length that would), and tokens added to the vocabulary whose embedding rows would stay
untrained. Always refused: an assistant turn whose own end-of-turn token is kept but not trained, or a
token trained outside the assistant turns (data/coverage.py; each named by file:line and turn). Everything it saw is printed
and saved as RUN/preflight.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table
from rich.text import Text

from phinetune.config import RunConfig
from phinetune.data.coverage import coverage
from phinetune.data.dataset import PreparedData
from phinetune.data.end_of_turn import end_of_turn
from phinetune.data.render import Rendered
from phinetune.errors import PreflightError
from phinetune.models.specs import GENERIC, SPECS, ModelSpec
from phinetune.progress import console, escape
from phinetune.train.adapter import resolve_targets, trainable_counts
from phinetune.train.targets import layer_type, peft_matches, unmatched_message


@dataclass
class LayerRow:
    """One layer type (`layers.*.self_attn.qkv_proj`) and how it is trained."""

    layer_type: str
    kind: str  # lora, lora-parameter, token-rows, full
    count: int  # how many layers of this type
    trainable: int  # trainable parameters added/unfrozen for this layer type


@dataclass
class PreflightReport:
    matches: dict[str, list[str]] = field(default_factory=dict)  # pattern -> adapted module/param names
    layers: list[LayerRow] = field(default_factory=list)
    not_adapted: list[str] = field(default_factory=list)  # spec targets this run leaves alone
    trainable: int = 0
    total: int = 0
    eot_token: str = ""
    eot_trained: bool = True
    eot_samples: tuple[int, int] = (0, 0)  # chat samples whose LAST end-of-turn is trained / chat samples
    eot_turns: tuple[int, int] = (0, 0)  # assistant turns whose own end-of-turn is trained / turns the mask trains
    coverage: dict = field(default_factory=dict)  # data.coverage.Coverage.summary(): the same counts as `data inspect`
    max_length_for_share: int = 0  # set when too few samples keep their last end-of-turn token
    eot_id: int | None = None
    pad_token: str = ""
    pad_id: int | None = None
    new_tokens: dict[str, str] = field(default_factory=dict)  # added token -> how its rows are trained
    empty_samples: int = 0
    sample: list[tuple[str, bool]] = field(default_factory=list)  # (text piece, trained)
    dtype: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def to_json(self) -> dict:
        out = asdict(self)
        out["share_percent"] = round(self.share, 4)
        return out


# ---- what is trained, read back from the (PEFT) model ------------------------------------------------


def _clean(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def trained_target(model, param_name: str) -> tuple[str, str]:
    """(adapted module or parameter name, kind) that a trainable parameter belongs to."""
    for marker in (".lora_A.", ".lora_B."):
        if marker in param_name:
            owner = param_name.split(marker)[0]
            wrapped = getattr(model.get_submodule(owner), "parameter_name", None)  # PEFT ParamWrapper (3-D experts)
            return (_clean(owner) + "." + wrapped, "lora-parameter") if wrapped else (_clean(owner), "lora")
    if ".token_adapter." in param_name:
        return _clean(param_name.split(".token_adapter.")[0]), "token-rows"
    if ".modules_to_save." in param_name:
        return _clean(param_name.split(".modules_to_save.")[0]), "full"
    return _clean(param_name.rsplit(".", 1)[0]), "full"


def layer_rows(model) -> list[LayerRow]:
    targets: dict[tuple[str, str], set[str]] = defaultdict(set)
    params: dict[tuple[str, str], int] = defaultdict(int)
    for name, p in model.named_parameters():
        if p.requires_grad:
            target, kind = trained_target(model, name)
            key = (layer_type(target), kind)
            targets[key].add(target)
            params[key] += p.numel()
    return [LayerRow(lt, kind, len(targets[(lt, kind)]), params[(lt, kind)]) for lt, kind in sorted(targets)]


def adapted_names(model) -> list[str]:
    return sorted(
        {
            trained_target(model, n)[0]
            for n, p in model.named_parameters()
            if p.requires_grad and trained_target(model, n)[1].startswith("lora")
        }
    )


def target_report(model, spec: ModelSpec, cfg: RunConfig, report: PreflightReport) -> None:
    targets = resolve_targets(spec, cfg.adapter)
    adapted = adapted_names(model)
    patterns = ([] if targets.all_linear else targets.modules) + targets.parameters
    report.matches = {pat: [n for n in adapted if peft_matches(n, pat)] for pat in patterns}
    for pattern, hits in report.matches.items():
        if not hits and not cfg.preflight.allow_unmatched_targets:
            report.problems.append(
                unmatched_message(pattern, spec, "parameter" if pattern in targets.parameters else "module")
            )
    preset = spec.lora_presets.get("all-linear")
    if preset and spec.key != "generic":
        report.not_adapted = [
            n for n in preset.modules + preset.parameters if not any(peft_matches(a, n) for a in adapted)
        ]


def new_token_report(model, tokenizer, spec: ModelSpec, cfg: RunConfig, report: PreflightReport) -> None:
    """Tokens the spec adds (Phi-2 ChatML) must have their embedding rows trained one way or another."""
    if not spec.added_tokens:
        return
    kinds = {row.kind for row in report.layers if row.layer_type in ("embed_tokens", "lm_head")}
    how = (
        "trained in full"
        if "full" in kinds
        else "rows trained (PEFT trainable tokens)"
        if "token-rows" in kinds
        else ""
    )
    for token in spec.added_tokens:
        report.new_tokens[token] = f"id {tokenizer.convert_tokens_to_ids(token)}: {how or 'NOT trained'}"
    if not how and not cfg.preflight.allow_untrained_new_tokens:
        report.problems.append(
            f"the tokens {', '.join(spec.added_tokens)} were added to {spec.key}'s vocabulary but their embedding rows "
            "are not trained (adapter.train_new_tokens=off); use adapter.train_new_tokens=rows "
            "(override: preflight.allow_untrained_new_tokens=true)"
        )


# ---- data side ----------------------------------------------------------------------------------------


def eot_report(
    tokenizer, spec: ModelSpec, cfg: RunConfig, data: PreparedData, report: PreflightReport, eot: str = ""
) -> None:
    """Per turn: each assistant turn's own end-of-turn token trained, nothing trained outside the turns,
    and enough samples keeping their last end-of-turn token after truncation (else it never learns to stop)."""
    report.eot_token = eot or end_of_turn(tokenizer, spec, cfg.model.end_of_turn)
    report.eot_id = tokenizer.convert_tokens_to_ids(report.eot_token)
    report.pad_token, report.pad_id = tokenizer.pad_token or "", tokenizer.pad_token_id
    if report.pad_id is not None and report.pad_id == report.eot_id:
        report.problems.append(
            f"the pad token {report.pad_token} is the end-of-turn token (id {report.eot_id}): padding would hide the "
            "token that teaches the model to stop; give the tokenizer a distinct pad token"
        )
    cov = coverage([*data.train, *data.eval, *data.dropped], cfg.data.mask, report.eot_token)  # the whole data set
    report.coverage = cov.summary()
    report.eot_turns = (cov.turns_eot_trained, cov.turns)
    report.eot_samples = (cov.last_eot_trained, cov.chat_samples)
    report.eot_trained = not cov.chat_samples or cov.turns_eot_trained > 0
    report.problems += cov.violations[:5] + (
        [f"... and {len(cov.violations) - 5} more mask violation(s)"] if len(cov.violations) > 5 else []
    )
    if cov.turns_without_eot and not cfg.preflight.allow_untrained_eot:
        report.problems.append(
            f"{len(cov.turns_without_eot)} assistant turn(s) end without the end-of-turn token {report.eot_token} "
            f"(e.g. {cov.turns_without_eot[0]}), so the model would never learn to stop; check the chat template "
            "and model.spec (override: preflight.allow_untrained_eot=true)"
        )
    elif not report.eot_trained and not cfg.preflight.allow_untrained_eot:
        report.problems.append(
            f"the end-of-turn token {report.eot_token} is never trained, so the model would never learn to stop; check the chat template and data.mask (override: preflight.allow_untrained_eot=true)"
        )
    floor = cfg.preflight.min_eot_share
    if cov.chat_samples and cov.last_eot_share < floor and not cfg.preflight.allow_untrained_eot:
        report.max_length_for_share = cov.max_length_for(floor)
        report.problems.append(
            f"only {cov.last_eot_trained}/{cov.chat_samples} chat samples ({cov.last_eot_share:.0%}) keep their last end-of-turn token "
            f"{report.eot_token} at data.max_length={cfg.data.max_length}, below preflight.min_eot_share={floor:g}: the others never "
            f"learn to stop; data.max_length={report.max_length_for_share} keeps {floor:.0%} (override: preflight.min_eot_share=0)"
        )


def mask_pieces(rendered: Rendered, tokenizer) -> list[tuple[str, bool]]:
    """The sample as (text, trained) runs, decoded per run as `data inspect` does: a character split over
    several byte-level tokens (é, emoji, CJK) decodes whole instead of as replacement characters."""
    from phinetune.data.inspect import mask_segments

    return mask_segments(rendered, tokenizer)


def show_mask(pieces: list[tuple[str, bool]], plain: bool = False) -> Text:
    """Trained tokens in bold green (or between [[ ]] when there is no colour), the rest dimmed."""
    out = Text()
    for text, trained in pieces:
        if plain and trained:
            text = f"[[{text}]]"
        out.append(text, style="bold green" if trained else "dim")
    return out


def context_check(max_length: int, model_name: str, spec: ModelSpec, context: int) -> str:
    """Refuse data.max_length above the model's context (`context`: the spec's, else the loaded config's); for a
    LongRoPE model, return a note when samples may pass the length where it switches RoPE factors ("" otherwise).

    transformers' LongRoPE picks the long factors for a whole forward pass when its longest position passes
    original_max_position_embeddings, the short ones otherwise (modeling_rope_utils, longrope_frequency_update)."""
    name = model_name if spec is GENERIC or spec.hub_id == model_name else f"{model_name} ({spec.key})"
    if context and max_length > context:
        longer = [s.key for s in SPECS.values() if s.model_type == spec.model_type and s.context_length >= max_length][
            :3
        ]
        raise PreflightError(
            f"data.max_length={max_length} is above {name}'s context of {context:,} tokens (positions past it "
            f"were never trained); set data.max_length={context} or less"
            + (f", or train a model with that context ({', '.join(longer)})" if longer else "")
        )
    if spec.rope_scaling == "longrope" and spec.original_context and max_length > spec.original_context:
        return (
            f"data.max_length={max_length} is above {spec.original_context:,} tokens, where {name} switches from its short to its "
            f"long RoPE factors (LongRoPE): a batch whose longest sample passes {spec.original_context:,} tokens trains every "
            "position with the long factors, a shorter one with the short factors, as inference on a prompt that long or short will"
        )
    return ""


def check(
    cfg: RunConfig, spec: ModelSpec, model, tokenizer, data: PreparedData, dtype=None, eot: str = ""
) -> PreflightReport:
    report = PreflightReport()
    report.trainable, report.total = trainable_counts(model)
    report.layers = layer_rows(model)
    if cfg.adapter.method == "lora":
        target_report(model, spec, cfg, report)
    new_token_report(model, tokenizer, spec, cfg, report)
    eot_report(tokenizer, spec, cfg, data, report, eot)
    report.empty_samples = data.info.empty
    if report.empty_samples and not cfg.preflight.allow_empty_samples:
        where = ", ".join(data.info.empty_where[:5]) + (", ..." if len(data.info.empty_where) > 5 else "")
        report.problems.append(
            f"{report.empty_samples} sample(s) have no trained tokens after masking/truncation at data.max_length={cfg.data.max_length} ({where}); raise max_length or fix the data (override: preflight.allow_empty_samples=true)"
        )
    if not data.train:
        report.problems.append("no training sample has a trained token")
    else:
        report.sample = mask_pieces(data.train[0], tokenizer)
    report.dtype = dtype_plan(cfg, spec, dtype)
    return report


def dtype_plan(cfg: RunConfig, spec: ModelSpec, dtype) -> dict[str, str]:
    plan = {"dtype": getattr(dtype, "name", "?"), "reason": getattr(dtype, "reason", ""), "quant": cfg.model.quant}
    if cfg.model.quant == "nf4":
        plan["quant"] = f"nf4 base weights (double quantization), LoRA and compute in {plan['dtype']}"
    plan.update({f"refused {name}": why for name, why in spec.refused_dtypes.items()})
    return plan


# ---- output -------------------------------------------------------------------------------------------


def print_report(report: PreflightReport, cfg: RunConfig, spec: ModelSpec, data: PreparedData) -> None:
    console.rule(Text("pre-flight", style="bold"))
    d = report.dtype
    console.print(
        f"model spec: {spec.key}   method: {cfg.adapter.method}   dtype: {d.get('dtype')} ({d.get('reason')})   quant: {d.get('quant')}"
    )
    for key, why in d.items():
        if key.startswith("refused"):
            console.print(f"  {key}: {why}")
    for pattern, hits in report.matches.items():
        console.print(
            escape(f"  target {pattern!r}: {len(hits)} match(es)")
            + (escape(f", e.g. {hits[0]}") if hits else "  [red]NONE[/red]"),
            markup=True,
        )
    console.print(layers_table(report))
    if report.not_adapted:
        console.print(f"not adapted (by choice of targets): {', '.join(report.not_adapted)}")
    for token, how in report.new_tokens.items():
        console.print(f"  added token {token}: {how}")
    console.print(f"trainable parameters: {report.trainable:,} of {report.total:,} ({report.share:.2f}%)")
    console.print(
        f"data: {data.info.read} read, {data.info.duplicates} duplicates removed, {len(data.info.skipped)} skipped, "
        f"{data.info.train} train / {data.info.eval} eval, {data.info.truncated} truncated, {report.empty_samples} with no trained token"
        + (" (tokenized data from cache)" if data.info.cached else "")
    )
    if data.info.read_summary:
        console.print(data.info.read_summary, style="yellow")
    (with_eot, chat), (turns_ok, turns) = report.eot_samples, report.eot_turns
    cut = report.coverage.get("turns_cut_by_max_length", 0)
    cut_note = f", {cut:d} cut by max_length" if cut else ""
    console.print(
        f"end-of-turn token {escape(str(report.eot_token))} trained: {'yes' if report.eot_trained else '[red]NO[/red]'} "
        f"(own token of {turns_ok:d}/{turns:d} assistant turns{escape(cut_note)}; "
        f"last one kept in {with_eot:d}/{chat:d} chat samples)",
        markup=True,
        highlight=False,
    )
    distinct = report.pad_id != report.eot_id
    console.print(
        f"pad token {escape(str(report.pad_token))} (id {escape(str(report.pad_id))}) distinct from end-of-turn token (id {escape(str(report.eot_id))}): "
        f"{'yes' if distinct else '[red]NO[/red]'}",
        markup=True,
        highlight=False,
    )
    if report.sample:
        plain = not console.is_terminal
        console.print("one sample, trained tokens " + ("between [[ ]]:" if plain else "in green:"), markup=False)
        console.print(show_mask(report.sample, plain))


def layers_table(report: PreflightReport) -> Table:
    table = Table(title="trained, per layer type", title_justify="left")
    for col in ("layer type", "how", "layers", "trainable params"):
        table.add_column(col, justify="right" if col in ("layers", "trainable params") else "left")
    for row in report.layers:
        table.add_row(row.layer_type, row.kind, str(row.count), f"{row.trainable:,}")
    return table


def save_report(report: PreflightReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2))


def run_preflight(cfg, prepared, verbose: bool = True, save_to: Path | None = None) -> PreflightReport:
    """The pre-flight of a train.prepare.Prepared run (train and check both come here)."""
    report = check(cfg, prepared.spec, prepared.model, prepared.tokenizer, prepared.data, prepared.dtype, prepared.eot)
    report.dtype["gradient checkpointing"] = (
        prepared.checkpointing.describe()
    )  # the auto choice, recorded (train/recompute.py)
    if verbose:
        print_report(report, cfg, prepared.spec, prepared.data)
    if save_to is not None:
        save_report(report, save_to)
    if report.problems:
        raise PreflightError("pre-flight failed:\n  " + "\n  ".join(report.problems))
    return report
