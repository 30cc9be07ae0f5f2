"""Merge a LoRA run into a standalone model folder (sharded safetensors + tokenizer + chat template).

A QLoRA run was trained on NF4 weights, so there are two honest bases to merge its adapter into, and the
choice is explicit (`--base`):

- `dequantized` (default): the NF4 base weights, dequantized to 16/32-bit. This is exactly the model that
  was trained and evaluated (nf4 base + adapter): its logits equal the trained model's. The adapter
  learned on top of the quantization error, so this is the base it belongs to.
- `original`: the full-precision checkpoint the NF4 weights came from. Slightly different from what was
  trained (the quantization error is gone but the adapter still corrects for it).

Either way the merge is written in 16/32-bit, never re-quantized to 4-bit (that would round the sum back
to NF4 and lose most of the adapter's change). For QLoRA runs both merges are built, one after the other
(one model in memory at a time), and the logit gap between them on a few held-out samples is printed, so
the choice is made with its cost measured. A LoRA run's base was never quantized: it has only one base.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from phinetune.errors import ConfigError, PhinetuneError
from phinetune.progress import console, progress_console
from phinetune.runs.checkpoints import pick_checkpoint
from phinetune.runs.folders import open_run
from phinetune.runs.loading import Loaded, apply_checkpoint, load_for_inference
from phinetune.runs.run_dir import RunDir, write_merged_marker

BASES = ("dequantized", "original")
GAP_SAMPLES = 4
GAP_MAX_TOKENS = 256


@dataclass
class LogitGap:
    samples: int
    tokens: int
    max_abs: float
    mean_abs: float
    top1_agreement: float  # share of positions where both merges predict the same next token


def readable_by_all(folder: Path) -> None:
    """Give written files the mode the umask allows (transformers writes shards through a private temp file: 0600),
    so a merged model can be shared or served by another user like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def merge_run(
    run_path: str,
    out: str,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    base: str | None = None,
    checkpoint: str | None = None,
    announce: bool = True,
) -> Path:
    """`checkpoint` ('last', 'step-N', 'best'): merge that training checkpoint's weights instead of the final adapter.
    `announce=False`: no "merged model written to" line (export and push merge into a staging folder that is gone when they finish)."""
    run = open_run(run_path)
    pick_checkpoint(
        run, checkpoint
    )  # an unfinished or damaged run, or a missing checkpoint: one sentence before any loading
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise PhinetuneError(f"merge output {out_dir} is not empty; choose another --out or pass --overwrite")
    if run.is_full:
        raise PhinetuneError(f"{run.path} is a full fine-tune: its model/ folder is already a standalone model")
    if base is not None and base not in BASES:
        raise ConfigError(
            f"merge --base '{base}' is unknown; choose dequantized (the NF4 weights that were trained) or original (the full-precision checkpoint)"
        )
    qlora = run.read_info().quant == "nf4"
    if not qlora:
        if base == "dequantized":
            console.print(
                "note: this run trained a LoRA on an unquantized base; that base is merged (--base applies to QLoRA runs)"
            )
        (merged, loaded), gap = merge_into(run, dtype, "original", checkpoint), None
    else:
        merged, loaded, gap = merge_qlora(run, dtype, base or "dequantized", checkpoint)
    base = base or ("dequantized" if qlora else "original")
    write(merged, loaded, run, out_dir, max_shard_size, base, gap, qlora)
    if announce:
        console.print(
            f"merged model written to {out_dir} ({base} base)" if qlora else f"merged model written to {out_dir}"
        )
    return out_dir


def merge_into(run: RunDir, dtype: str, base: str, checkpoint: str | None = None) -> tuple[torch.nn.Module, Loaded]:
    """The run's adapter merged into one base (the original checkpoint, or its NF4 quantization dequantized),
    and the Loaded it came from (tokenizer, spec, stop ids)."""
    if base == "original":
        loaded = load_for_inference(str(run.path), dtype=dtype, quant="none", adapter=True, checkpoint=checkpoint)
    else:
        from peft import PeftModel

        # The base quantized exactly as training quantized it (same checkpoint, same NF4 settings), then
        # dequantized to the merge dtype, with the adapter applied on top.
        loaded = load_for_inference(str(run.path), dtype=dtype, quant="nf4", adapter=False)
        # Before any forward: on CPU, bitsandbytes repacks NF4 weights for its kernel at the first forward,
        # and dequantizing repacked data gives wrong weights.
        if any(
            getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
            for m in loaded.model.modules()
        ):
            raise PhinetuneError("internal: the NF4 weights were repacked for the CPU kernel before being dequantized")
        plain = loaded.model.dequantize(dtype=next(p.dtype for p in loaded.model.parameters() if p.is_floating_point()))
        weights = pick_checkpoint(run, checkpoint)
        loaded.model = (
            PeftModel.from_pretrained(plain, str(run.adapter)) if weights is None else apply_checkpoint(plain, weights)
        )
    with progress_console.status(f"Merging the adapter into the {base} base"):
        merged = loaded.model.merge_and_unload()
    merged.eval()
    return merged, loaded


def merge_qlora(run: RunDir, dtype: str, base: str, checkpoint: str | None = None):
    """Both merges, the other one first (its logits kept, its weights freed), then the chosen one."""
    other = "original" if base == "dequantized" else "dequantized"
    merged, loaded = merge_into(run, dtype, other, checkpoint)
    ids = held_out_ids(run, loaded.tokenizer)
    other_logits = logits(merged, ids)
    del merged, loaded
    merged, loaded = merge_into(run, dtype, base, checkpoint)
    gap = logit_gap(logits(merged, ids), other_logits) if ids else None
    if gap is None:
        console.print(
            "logit gap between --base original and --base dequantized: not measured (no held-out sample could be read)"
        )
    else:
        console.print(
            f"logit gap, --base original vs dequantized, on {gap.samples} held-out samples ({gap.tokens} tokens): "
            f"max |diff| {gap.max_abs:.3g}, mean |diff| {gap.mean_abs:.3g}, same top-1 token at {gap.top1_agreement:.1%} of positions",
            highlight=False,
        )
    return merged, loaded, gap


def held_out_ids(run: RunDir, tokenizer, n: int = GAP_SAMPLES) -> list[list[int]]:
    """Token ids of the first held-out samples of the run's own split (what its eval loss was measured on)."""
    from phinetune.data.dataset import split_records
    from phinetune.data.render import render_sample
    from phinetune.errors import DataError

    cfg = run.read_config()
    try:
        _, held, _ = split_records(cfg.data, skip_bad=True)
    except (PhinetuneError, OSError, ValueError):
        return []
    out = []
    for rec in held[:n]:
        try:
            out.append(
                render_sample(
                    tokenizer,
                    rec.sample,
                    min(cfg.data.max_length, GAP_MAX_TOKENS),
                    "all",
                    fold_system=cfg.data.fold_system,
                ).input_ids
            )
        except DataError:
            continue
    return out


@torch.no_grad()
def logits(model, ids: list[list[int]]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    return [model(torch.tensor([x], device=device)).logits[0].float().cpu() for x in ids]


def logit_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> LogitGap:
    diffs = torch.cat([(x - y).abs().flatten() for x, y in zip(a, b)])
    same = torch.cat([(x.argmax(-1) == y.argmax(-1)) for x, y in zip(a, b)])
    return LogitGap(len(a), int(same.numel()), float(diffs.max()), float(diffs.mean()), float(same.float().mean()))


def write(
    merged,
    loaded: Loaded,
    run: RunDir,
    out_dir: Path,
    max_shard_size: str,
    base: str,
    gap: LogitGap | None,
    qlora: bool,
) -> None:
    with progress_console.status(f"Writing {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
        # Stop at the end-of-turn token too (Phi-3's config only names <|endoftext|>), and record the spec
        # so later verbs know the chat format without guessing from config.json.
        merged.generation_config.eos_token_id = loaded.stop_ids
        merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
        details = {"base": base if qlora else "original (LoRA run: unquantized base)"}
        if gap is not None:
            details["logit_gap_original_vs_dequantized"] = asdict(gap)
        write_merged_marker(out_dir, loaded.spec.key, run, **details)
        loaded.tokenizer.save_pretrained(out_dir)
        readable_by_all(out_dir)
