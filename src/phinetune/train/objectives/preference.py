"""Offline preference objectives (dpo, ipo, orpo, simpo, kto) as steps of the one recipe (train/recipe.py).

What the recipe gives them unchanged: pre-flight (the chosen replies' masks and end-of-turn token), the
deterministic micro-batch order (a pure function of seed and step, so resume is exact), gradient
accumulation and multi-process through accelerate, atomic checkpoints, the run folder and its report.

What is theirs: a batch is [chosen..., rejected...] of unpacked rows (each pair's two sequences share the
prompt token for token, see data/preference.py); the loss is a mean over the pairs of the whole optimizer
step (every pair weighs the same whatever micro-batch or process it landed in, like SFT's tokens); and the
reference log-probabilities come from (preference.reference):
    adapter_off  the same model with the LoRA adapter switched off (PEFT disable_adapter): no second copy
    copy         a frozen copy of the starting weights (full fine-tuning)
    cached       computed once before step 1 and stored in RUN/reference_logps.safetensors, read on resume
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from phinetune.config import RunConfig
from phinetune.data.dataset import DataInfo, PreparedData, dialect, hold_out
from phinetune.data.packing import Row, batches, collate, unpacked
from phinetune.data.preference import (
    UNPAIRED,
    PrefInfo,
    PrefSample,
    as_sft_records,
    in_template_form,
    read_preferences,
    render_preferences,
)
from phinetune.data.readers import ReadReport, Record
from phinetune.data.render import IGNORE, Rendered
from phinetune.errors import ConfigError
from phinetune.models.specs import GENERIC, ModelSpec, get_spec
from phinetune.train.guards import check_finite
from phinetune.train.loop import Loop, StepStats, global_count, micro_batches, optimizer_step
from phinetune.train.loss import chunk_rows, split_head
from phinetune.train.objectives.pref_losses import LOSSES, REFERENCE_FREE, Logps, PrefLoss


@dataclass
class PrefRow:
    """One training item: the chosen and rejected sequences (KTO: the completion and its KL twin)."""

    chosen: Row
    rejected: Row
    desirable: bool = True
    ref: tuple[float, float] | None = None  # cached reference log-probs (chosen, rejected)

    # The views checkpoint.rows_digest and guards.describe_batch read (position ids restart per sequence).
    input_ids = property(lambda self: self.chosen.input_ids + self.rejected.input_ids)
    labels = property(lambda self: self.chosen.labels + self.rejected.labels + [int(self.desirable)])
    position_ids = property(lambda self: self.chosen.position_ids + self.rejected.position_ids)

    def __len__(self) -> int:  # tokens, as the recipe's plan counts them
        return len(self.chosen) + len(self.rejected)


@dataclass
class PrefData(PreparedData):
    pairs: list[PrefSample] = None
    eval_pairs: list[PrefSample] = None
    pref_info: PrefInfo = None


@dataclass
class PreferenceState:
    """Where the reference log-probabilities come from, set up by Preference.begin."""

    reference: str | None  # adapter_off, copy or cached; None for the reference-free losses (orpo, simpo)
    ref_model: torch.nn.Module | None = None  # reference == copy: a frozen copy of the starting weights


class Preference:
    """dpo, ipo, orpo, simpo or kto (train.objective): the objective, holding its reference."""

    eval_key = "eval_loss"
    state: PreferenceState  # set by begin

    def __init__(self, name: str):
        self.name = name

    def load_data(self, cfg: RunConfig, tokenizer, eot: str) -> PrefData:
        """The pairs (KTO: the labelled completions), rendered; the chosen replies feed the pre-flight."""
        return load_data(cfg, tokenizer, eot)

    def rows(self, data: PrefData, cfg: RunConfig) -> tuple[list[PrefRow], list[PrefRow]]:
        """One unpacked row per pair: its chosen and rejected sequences."""
        return rows(data, cfg)

    def begin(self, loop: Loop) -> None:
        """Make the reference ready before step 1 (and before a checkpoint is loaded: it is the starting model)."""
        mode = reference_mode(loop.cfg)
        if mode == "cached":
            cache_reference(loop)
        copied = copy.deepcopy(loop.accelerator.unwrap_model(loop.model)).eval() if mode == "copy" else None
        self.state = PreferenceState(mode, copied.requires_grad_(False) if copied is not None else None)

    def step(self, loop: Loop, step: int) -> StepStats:
        """The preference loss, a mean over the pairs of the whole step (plus ORPO's NLL over its chosen tokens)."""
        return train_step(loop, self.state, step)

    def evaluate(self, loop: Loop) -> float:
        """Mean preference loss per pair over the whole eval set."""
        return evaluate(loop, self.state)

    def eval_metrics(self, value: float) -> dict[str, float]:
        return {self.eval_key: value}


# ---------------------------------------------------------------- data


def load_data(cfg: RunConfig, tokenizer, eot: str) -> PrefData:
    """Read and render the pairs, or take them from the tokenized-data cache (data/cache.py) as SFT data is."""
    from phinetune.data import cache

    kind = UNPAIRED if cfg.train.objective == "kto" else "pairs"
    spec = get_spec(cfg.model.name, cfg.model.spec)
    key = (
        cache.cache_key(
            cfg.data, tokenizer, eot, None if spec is GENERIC else dialect(spec), layout=f"preference-{kind}"
        )
        if cfg.data.cache
        else None
    )
    hit = _from_entry(cache.load_entry(cfg.data, key)) if key else None
    if hit is not None:
        return hit
    data = _read_and_render(cfg, tokenizer, eot, kind, spec)
    if key:
        cache.save_entry(cfg.data, key, _to_entry(data))
    return data


def _to_entry(data: PrefData) -> dict:
    return {
        "pairs": [asdict(p) for p in data.pairs],
        "eval_pairs": [asdict(p) for p in data.eval_pairs],
        "train_records": [asdict(r) for r in data.train_records],
        "info": asdict(data.info),
        "pref_info": asdict(data.pref_info),
    }


def _from_entry(entry: dict | None) -> PrefData | None:
    if entry is None:
        return None

    def sample(d: dict) -> PrefSample:
        return PrefSample(
            Rendered(**d["chosen"]), Rendered(**d["rejected"]), d["prompt_tokens"], d["where"], d["desirable"]
        )

    try:
        pairs, eval_pairs = [sample(d) for d in entry["pairs"]], [sample(d) for d in entry["eval_pairs"]]
        return PrefData(
            [p.chosen for p in pairs],
            [p.chosen for p in eval_pairs],
            [Record(**r) for r in entry["train_records"]],
            DataInfo(**{**entry["info"], "cached": True}),
            pairs=pairs,
            eval_pairs=eval_pairs,
            pref_info=PrefInfo(**entry["pref_info"]),
        )
    except (KeyError, TypeError):
        return None  # a damaged entry is rebuilt, never trusted


def _read_and_render(cfg: RunConfig, tokenizer, eot: str, kind: str, spec: ModelSpec) -> PrefData:
    d, report = cfg.data, ReadReport()
    records = in_template_form(read_preferences(d.train, kind, d.skip_bad_rows, d.limit, d.split, report), spec)
    if d.eval:
        eval_recs = in_template_form(read_preferences(d.eval, kind, d.skip_bad_rows, None, d.split, report), spec)
        train_recs = records
    else:
        train_recs, eval_recs = hold_out(records, d)
    pinfo = PrefInfo(read=report.read, kind=kind, skipped=list(report.skipped))
    pairs = render_preferences(train_recs, tokenizer, d.max_length, eot, pinfo)
    eval_pairs = render_preferences(eval_recs, tokenizer, d.max_length, eot, pinfo) if eval_recs else []
    info = DataInfo(
        read=report.read,
        format=f"preference ({kind})",
        skipped=pinfo.skipped,
        read_summary=report.summary(),
        train=len(pairs),
        eval=len(eval_pairs),
        truncated=pinfo.truncated,
    )
    # The pre-flight reads the chosen (KTO: the completion) renders, in step with their records.
    kept = {p.where for p in pairs}
    sft_records = [r for r in as_sft_records(train_recs) if r.where in kept]
    return PrefData(
        [p.chosen for p in pairs],
        [p.chosen for p in eval_pairs],
        sft_records,
        info,
        pairs=pairs,
        eval_pairs=eval_pairs,
        pref_info=pinfo,
    )


def rows(data: PrefData, cfg: RunConfig) -> tuple[list[PrefRow], list[PrefRow]]:
    def convert(samples):
        return [PrefRow(unpacked([s.chosen])[0], unpacked([s.rejected])[0], s.desirable) for s in samples]

    return convert(data.pairs), convert(data.eval_pairs)


# ---------------------------------------------------------------- log-probabilities


def _token_logps(head, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(h).float(), y, reduction="none")


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs of each row's trained tokens, their count), shape (rows,)."""
    tok, row_of, keep = token_logps(model, batch)
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=tok.device).index_add(0, row_of, tok)
    return sums, keep.sum(dim=1).float()


def token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob of every trained token (flat, in row order), the row each belongs to, and the trained mask.

    Only trained positions go through the LM head, chunk by chunk, each chunk recomputed in backward
    (torch checkpoint) so at most one chunk of full-vocabulary logits is alive at a time."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    row_of = keep.nonzero()[:, 0]
    parts = split_head(model)
    if parts is None:  # DDP wrapper (gradient sync runs through its forward) or a post-processing head
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[:, :-1]
        tok = -F.cross_entropy(logits[keep].float(), labels[keep], reduction="none")
    else:
        decoder, head = parts
        hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)[0][:, :-1][
            keep
        ]
        step = chunk_rows(head.weight.shape[0] if hasattr(head, "weight") else 32_000)
        pieces = []
        for s in range(0, hidden.shape[0], step):
            h, y = hidden[s : s + step], labels[keep][s : s + step]
            pieces.append(
                checkpoint(_token_logps, head, h, y, use_reentrant=False)
                if torch.is_grad_enabled()
                else _token_logps(head, h, y)
            )
        tok = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return tok, row_of, keep


def _collate(items: list[PrefRow], pad_id: int, device) -> dict[str, torch.Tensor]:
    batch = collate([r.chosen for r in items] + [r.rejected for r in items], pad_id)
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------- reference


def reference_mode(cfg: RunConfig) -> str | None:
    if cfg.train.objective in REFERENCE_FREE:
        return None
    mode = cfg.preference.reference
    if mode == "auto":
        return "adapter_off" if cfg.adapter.method == "lora" else "cached"
    if mode == "adapter_off" and cfg.adapter.method != "lora":
        raise ConfigError(
            "preference.reference=adapter_off needs adapter.method=lora (full fine-tuning has no adapter to switch off); use copy or cached"
        )
    return mode


@torch.no_grad()
def reference_logps(
    loop: Loop, state: PreferenceState, model_batch: dict, items: list[PrefRow]
) -> tuple[torch.Tensor, torch.Tensor]:
    mode, acc = state.reference, loop.accelerator
    b = len(items)
    if mode == "cached":
        ref = torch.tensor([r.ref for r in items], dtype=torch.float32, device=acc.device)
        return ref[:, 0], ref[:, 1]
    if mode == "copy":
        sums, _ = sequence_logps(state.ref_model, model_batch)
    else:
        model = acc.unwrap_model(loop.model)
        with model.disable_adapter():
            sums, _ = sequence_logps(model, model_batch)
    return sums[:b], sums[b:]


def cache_reference(loop: Loop) -> None:
    """RUN/reference_logps.safetensors: computed by the main process the first time, read by everyone after."""
    acc, path = loop.accelerator, loop.run.reference_logps
    if acc.is_main_process and not path.exists():
        model = acc.unwrap_model(loop.model)
        was_training = model.training
        model.eval()
        tensors = {}
        for name, items in (("train", loop.train_rows), ("eval", loop.eval_rows)):
            out = []
            for group in batches(items, loop.cfg.train.batch_size, 0, 0, shuffle=False):
                with torch.no_grad(), acc.autocast():
                    sums, _ = sequence_logps(model, _collate(group, loop.tokenizer.pad_token_id, acc.device))
                out.append(torch.stack(sums.chunk(2), dim=1).cpu())
            tensors[name] = torch.cat(out) if out else torch.zeros(0, 2)
        model.train(was_training)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    acc.wait_for_everyone()
    saved = load_file(str(path))
    for name, items in (("train", loop.train_rows), ("eval", loop.eval_rows)):
        if saved[name].shape[0] != len(items):
            raise ConfigError(
                f"{path} holds reference log-probs for {saved[name].shape[0]} {name} pairs, this run has {len(items)}; delete it to recompute"
            )
        for row, (c, r) in zip(items, saved[name].tolist()):
            row.ref = (c, r)


# ---------------------------------------------------------------- loss


def pair_losses(
    loop: Loop, state: PreferenceState, items: list[PrefRow], collective: bool = True
) -> tuple[PrefLoss, torch.Tensor]:
    """PrefLoss of one micro-batch, and the trained tokens of its chosen replies.

    `collective`: KTO's KL estimate is the mean over every process's micro-batch (one all-reduce), as TRL
    gathers it. Evaluation passes False: each process holds its own share of the eval set, and an uneven
    share gives the processes different numbers of batches, so a collective per batch would pair up with
    another call (wrong values) or wait for ever; there the estimate is the batch's own."""
    cfg, acc = loop.cfg, loop.accelerator
    batch = _collate(items, loop.tokenizer.pad_token_id, acc.device)
    b = len(items)
    with acc.autocast():
        if cfg.train.objective == "kto":
            # KTO scores only the completion; the twin (same prompt, another completion) estimates the KL term.
            chosen_batch = {k: v[:b] if v.dim() else v for k, v in batch.items()}
            sums, counts = sequence_logps(loop.model, chosen_batch)
            with torch.no_grad():
                twin = {k: v[b:] if v.dim() else v for k, v in batch.items()}
                twin_sums, _ = sequence_logps(loop.model, twin)
                ref_c, ref_twin = reference_logps(loop, state, batch, items)
                kl = (twin_sums - ref_twin).mean()
                kl = (acc.reduce(kl, "mean") if collective else kl).clamp(min=0)
            lp = Logps(
                sums,
                sums,
                counts,
                counts,
                ref_c,
                ref_c,
                torch.tensor([r.desirable for r in items], device=acc.device),
                kl,
            )
        else:
            sums, counts = sequence_logps(loop.model, batch)
            ref = reference_logps(loop, state, batch, items) if state.reference else (None, None)
            lp = Logps(sums[:b], sums[b:], counts[:b], counts[b:], *ref)
        out = LOSSES[cfg.train.objective](lp, cfg.preference)
    return out, lp.chosen_n


def train_step(loop: Loop, state: PreferenceState, step: int) -> StepStats:
    acc, model = loop.accelerator, loop.model
    micro = micro_batches(loop, step)
    n_pairs = global_count(acc, sum(len(m) for m in micro))
    n_tokens = global_count(
        acc,
        sum(sum(int(r.chosen.labels[i] != IGNORE) for i in range(1, len(r.chosen.labels))) for m in micro for r in m),
    )
    totals = _Totals()
    for i, items in enumerate(micro):
        sync = acc.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            out, _ = pair_losses(loop, state, items)
            loss = out.per_pair.sum() / n_pairs + out.token_sum / max(n_tokens, 1)
            acc.backward(loss * acc.num_processes)
        totals.add(out, loss.detach())
    stats = totals.reduce(acc)
    check_finite(stats["loss"], step, micro, loop.tokenizer)
    grad_norm = optimizer_step(loop)
    tokens = global_count(acc, sum(len(r.chosen) + len(r.rejected) for m in micro for r in m))
    return StepStats(stats.pop("loss"), grad_norm, loop.scheduler.get_last_lr()[0], tokens, n_tokens, stats)


@torch.no_grad()
def evaluate(loop: Loop, state: PreferenceState) -> float:
    """Mean preference loss per pair over the whole eval set (all processes)."""
    acc = loop.accelerator
    loop.model.eval()
    totals, count = _Totals(), 0
    for group in batches(
        loop.eval_rows[acc.process_index :: acc.num_processes], loop.cfg.train.batch_size, 0, 0, shuffle=False
    ):
        out, n = pair_losses(loop, state, group, collective=False)
        totals.add(out, out.per_pair.sum() + out.token_sum / max(float(n.sum()), 1) * len(group))
        count += len(group)
    loss = acc.reduce(torch.tensor(totals.loss, device=acc.device), "sum").item()
    return loss / max(global_count(acc, count), 1)


class _Totals:
    """Sums of per-pair metrics; means are taken over all pairs of the step (NaN entries: KTO's other kind)."""

    def __init__(self):
        self.loss = 0.0
        self.sums = torch.zeros(5, dtype=torch.float64)  # chosen reward, n, rejected reward, n, correct

    def add(self, out, loss) -> None:
        self.loss += float(loss)
        c, r = out.reward_chosen.double().cpu(), out.reward_rejected.double().cpu()
        both = ~(c.isnan() | r.isnan())
        self.sums += torch.stack(
            [c.nan_to_num().sum(), (~c.isnan()).sum(), r.nan_to_num().sum(), (~r.isnan()).sum(), ((c > r) & both).sum()]
        ).double()
        self.pairs = getattr(self, "pairs", 0) + int(both.sum())

    def reduce(self, acc) -> dict:
        s = acc.reduce(
            torch.cat([self.sums, torch.tensor([self.loss, getattr(self, "pairs", 0)], dtype=torch.float64)]).to(
                acc.device
            ),
            "sum",
        ).cpu()
        out = {"loss": s[5].item()}
        if s[1]:
            out["rewards_chosen"] = (s[0] / s[1]).item()
        if s[3]:
            out["rewards_rejected"] = (s[2] / s[3]).item()
        if s[1] and s[3]:
            out["margin"] = out["rewards_chosen"] - out["rewards_rejected"]
        if s[6]:
            out["accuracy"] = (s[4] / s[6]).item()
        return out
