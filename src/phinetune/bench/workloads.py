"""The training benchmark workloads, as data, and how to materialize one (random-init model + tokenizer + data).

The reference workloads use the real Phi-3 tokenizer and guanaco rows when a realdata folder is found
(--realdata, $PHINETUNE_REALDATA, or ../shared/realdata); otherwise a synthetic fallback (the built-in
BPE tokenizer and generated texts of varied length) keeps the bench runnable anywhere, with a note.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
TOKENIZER_DIR = "phi3-mini-4k-instruct_tokenizer"
GUANACO = ("datasets", "openassistant-guanaco", "openassistant_best_replies_eval.jsonl")


@dataclass(frozen=True)
class Workload:
    name: str
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    num_layers: int
    vocab_size: int
    rows: int = 64
    max_length: int = 512
    batch_size: int = 8
    learning_rate: float = 1e-4
    lora_r: int = 16
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    targets: tuple[str, ...] = PHI3_TARGETS
    quant: str = "none"  # nf4 on the GPU workload (the common QLoRA recipe)
    device: str = "cpu"
    target_speedup: float = 4.0  # against TRL with padding
    target_memory: float = 0.5
    target_speedup_tuned: float = 3.0  # against TRL tuned
    target_memory_tuned: float | None = 0.5  # None: no memory target against TRL tuned
    target_mfu: float = 0.7  # of the matmul peak measured in the same run
    phinetune_overrides: tuple[str, ...] = ()
    seed: int = 0


WORKLOADS: dict[str, Workload] = {
    # 32 guanaco rows (10,722 real tokens): the three sides then train in about 5 minutes on an idle 2-core CPU
    # (TRL with padding alone took 5.6 of the 8 minutes that 64 rows needed with two sides); --rows 64 for the old size.
    "cpu-reference": Workload("cpu-reference", 3072, 8192, 32, 32, 1, 32064, rows=32),
    # Full-size Phi-3.5-mini (3.8B, random weights), QLoRA, seq 512. Gradient checkpointing on the phinetune
    # side: 32 layers of activations at batch 8 x 512 would otherwise dominate GPU memory.
    "gpu-reference": Workload(
        "gpu-reference",
        3072,
        8192,
        32,
        32,
        32,
        32064,
        quant="nf4",
        device="cuda",
        target_speedup=2.5,
        target_memory=0.3,
        target_speedup_tuned=1.5,
        target_memory_tuned=None,
        target_mfu=0.0,
        phinetune_overrides=("model.gradient_checkpointing=true",),
    ),
    # bench infer's CPU decode workload: Phi-3-mini width, 2 layers, random weights. Batch-1
    # decode reads about 650 MB per step in bf16 (2 layers of 226 MB + the 197 MB LM head), far past any cache.
    "cpu-decode": Workload("cpu-decode", 3072, 8192, 32, 32, 2, 32064, rows=1, target_speedup=0.0, target_memory=99.0),
    # For tests: seconds on CPU.
    "tiny": Workload(
        "tiny",
        64,
        128,
        4,
        4,
        1,
        1024,
        rows=12,
        max_length=48,
        batch_size=4,
        learning_rate=1e-2,
        target_speedup=0.0,
        target_memory=99.0,
        target_speedup_tuned=0.0,
        target_memory_tuned=99.0,
        target_mfu=0.0,
    ),
}

# The GPU reference in bf16 LoRA (no quantization), for scripts/gpu_check.sh's second training row: a copy, so it
# keeps every target and override the QLoRA workload has.
WORKLOADS["gpu-reference-bf16"] = replace(WORKLOADS["gpu-reference"], name="gpu-reference-bf16", quant="none")


def get_workload(name: str) -> Workload:
    """The named workload, or one sentence naming the choices (`bench train --workload`)."""
    from phinetune.errors import ConfigError

    if name not in WORKLOADS:
        raise ConfigError(f"bench train --workload '{name}' is unknown; choose one of {', '.join(WORKLOADS)}")
    return WORKLOADS[name]


@dataclass
class Materialized:
    workload: Workload
    model_dir: str
    data_file: str
    real_data: bool
    note: str = ""
    lengths: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**asdict(self), "workload": asdict(self.workload)}


def find_realdata(explicit: str | None) -> Path | None:
    for candidate in (explicit, os.environ.get("PHINETUNE_REALDATA"), "../shared/realdata", "../../shared/realdata"):
        if candidate and (Path(candidate) / TOKENIZER_DIR).is_dir() and Path(candidate).joinpath(*GUANACO).is_file():
            return Path(candidate)
    return None


def synthetic_texts(n: int, seed: int) -> list[str]:
    """Texts of widely varied length (like guanaco's), from the bundled riddles, deterministic."""
    from phinetune.models.tiny import training_corpus

    corpus = " ".join(training_corpus()).split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([8, 20, 40, 80, 160, 320, 600])
        start = rng.randrange(max(1, len(corpus) - k))
        out.append(
            "### Human: "
            + " ".join(corpus[start : start + k])
            + " ### Assistant: "
            + " ".join(corpus[start : start + k // 2])
        )
    return out


def materialize(workload: Workload, work: Path, realdata: str | None = None, rows: int | None = None) -> Materialized:
    import torch
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    work.mkdir(parents=True, exist_ok=True)
    n = rows or workload.rows
    found = find_realdata(realdata) if workload.name != "tiny" else None
    if found:
        tokenizer = AutoTokenizer.from_pretrained(found / TOKENIZER_DIR)
        texts = [
            json.loads(line)["text"] for line in found.joinpath(*GUANACO).read_text(encoding="utf-8").splitlines()[:n]
        ]
        note = f"real data: Phi-3 tokenizer and the first {n} guanaco eval rows from {found}"
    else:
        from phinetune.models.specs import get_spec
        from phinetune.models.tiny import build_tokenizer

        tokenizer = build_tokenizer(get_spec("tiny-phi3"), vocab_size=min(1024, workload.vocab_size))
        texts = synthetic_texts(n, workload.seed)
        note = (
            (
                "synthetic fallback: built-in BPE tokenizer and generated texts (realdata not found; pass --realdata "
                "for the reference figures)"
            )
            if workload.name != "tiny"
            else "tiny test workload (synthetic)"
        )
    data_file = work / "data.jsonl"
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    model_dir = work / "model"
    config = Phi3Config(
        vocab_size=workload.vocab_size,
        hidden_size=workload.hidden_size,
        intermediate_size=workload.intermediate_size,
        num_hidden_layers=workload.num_layers,
        num_attention_heads=workload.num_heads,
        num_key_value_heads=workload.num_kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(workload.seed)
    model = Phi3ForCausalLM(config)
    if workload.device == "cuda":
        model = model.to(torch.bfloat16)  # 3.8B: save in bf16 (7.6 GB) as the real checkpoint is shipped
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    del model
    lengths = [
        min(workload.max_length, len(tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"]))
        for t in texts
    ]
    return Materialized(workload, str(model_dir), str(data_file), bool(found), note, lengths)
