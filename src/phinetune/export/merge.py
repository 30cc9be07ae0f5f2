"""Merge a LoRA run into a standalone model folder (sharded safetensors + tokenizer + chat template).

QLoRA runs are merged into a base re-loaded in 16/32-bit: merging into 4-bit weights would re-quantize
the sum and silently lose most of the adapter's change.
"""

from __future__ import annotations

from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.runs.loading import load_for_inference
from phinetune.progress import console
from phinetune.runs.run_dir import RunDir, write_merged_marker


def merge_run(run_path: str, out: str, dtype: str = "auto", max_shard_size: str = "2GB", overwrite: bool = False) -> Path:
    run = RunDir.open(run_path)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise PhinetuneError(f"merge output {out_dir} is not empty; choose another --out or pass --overwrite")
    if run.is_full:
        raise PhinetuneError(f"{run.path} is a full fine-tune: its model/ folder is already a standalone model")
    # quant="none" is the point: the base is loaded dequantized even when training used nf4.
    loaded = load_for_inference(str(run.path), dtype=dtype, quant="none", adapter=True)
    with console.status("Merging adapter into the base weights"):
        merged = loaded.model.merge_and_unload()
    with console.status(f"Writing {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
        # Stop at the end-of-turn token too (Phi-3's config only names <|endoftext|>), and record the spec
        # so later verbs know the chat format without guessing from config.json.
        merged.generation_config.eos_token_id = loaded.stop_ids
        merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
        write_merged_marker(out_dir, loaded.spec.key, run)
        loaded.tokenizer.save_pretrained(out_dir)
    console.print(f"merged model written to {out_dir}")
    return out_dir
