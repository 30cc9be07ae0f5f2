"""Merge a LoRA run into a standalone model folder (sharded safetensors + tokenizer + chat template).

QLoRA runs are merged into a base re-loaded in 16/32-bit: merging into 4-bit weights would re-quantize
the sum and silently lose most of the adapter's change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from phinetune.errors import PhinetuneError
from phinetune.progress import console, progress_console
from phinetune.runs.loading import load_for_inference
from phinetune.runs.run_dir import RunDir, write_merged_marker


def readable_by_all(folder: Path) -> None:
    """Give written files the mode the umask allows (transformers writes shards through a private temp file: 0600),
    so a merged model can be shared or served by another user like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def merge_run(run_path: str, out: str, dtype: str = "auto", max_shard_size: str = "2GB", overwrite: bool = False,
              checkpoint: Optional[str] = None) -> Path:
    run = RunDir.open(run_path)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise PhinetuneError(f"merge output {out_dir} is not empty; choose another --out or pass --overwrite")
    if run.is_full:
        raise PhinetuneError(f"{run.path} is a full fine-tune: its model/ folder is already a standalone model")
    # quant="none" is the point: the base is loaded dequantized even when training used nf4.
    loaded = load_for_inference(str(run.path), dtype=dtype, quant="none", adapter=True, checkpoint=checkpoint)
    with progress_console.status("Merging adapter into the base weights"):
        merged = loaded.model.merge_and_unload()
    with progress_console.status(f"Writing {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
        # Stop at the end-of-turn token too (Phi-3's config only names <|endoftext|>), and record the spec
        # so later verbs know the chat format without guessing from config.json.
        merged.generation_config.eos_token_id = loaded.stop_ids
        merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
        write_merged_marker(out_dir, loaded.spec.key, run)
        loaded.tokenizer.save_pretrained(out_dir)
        readable_by_all(out_dir)
    console.print(f"merged model written to {out_dir}")
    return out_dir
