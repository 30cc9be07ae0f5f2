"""Check `plan` against reality: run one training step of a random-weight model in a fresh process and
compare its peak memory with the estimate for the same config. The model is saved to a temporary folder
and loaded by train.prepare.prepare, the very preparation `train` and `check` use.

On CPU the peak is the process's resident-set high-water mark (Linux VmHWM, reset through
/proc/self/clear_refs once the model is built); on a CUDA GPU it is torch.cuda.max_memory_allocated.
Both are measured from a baseline taken before the model is created, so they cover weights, adapters,
gradients, optimizer states and activations -- what the estimate covers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from phinetune.bench.machine import proc_status, reset_peak_rss
from phinetune.errors import PhinetuneError
from phinetune.models.inspect import ModelFacts
from phinetune.models.plan import DEVICES, estimate
from phinetune.models.specs import SPECS, TINY_MODELS
from phinetune.models.tiny import TINY_SIZES

# What --validate runs: the tiny test models and a "small" one 16x their hidden size product, both on CPU.
SMALL_SIZES = dict(
    hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=16, max_position_embeddings=2048
)
CASES = (
    ("tiny-phi3", TINY_SIZES, 1024, "lora", 256, 4, False),
    ("tiny-phi3", TINY_SIZES, 1024, "full", 256, 4, False),
    ("small-phi3", SMALL_SIZES, 8192, "lora", 512, 4, False),
    ("small-phi3", SMALL_SIZES, 8192, "full", 512, 4, False),
    ("small-phi3", SMALL_SIZES, 8192, "lora", 512, 4, True),
    ("small-phi2", SMALL_SIZES, 8192, "lora", 512, 4, False),
    ("small-phimoe", SMALL_SIZES, 8192, "lora", 512, 4, False),
)


@dataclass
class Measurement:
    name: str
    method: str
    seq: int
    batch: int
    checkpointing: bool
    device: str
    estimate_bytes: float
    measured_bytes: float

    @property
    def error(self) -> float:
        """Relative error of the estimate: positive means the plan over-estimates (the safe side)."""
        return (self.estimate_bytes - self.measured_bytes) / self.measured_bytes


def spec_key(name: str) -> str:
    return TINY_MODELS.get(name) or TINY_MODELS["tiny-" + name.split("-", 1)[1]]


def build_config(name: str, sizes: dict, vocab: int):
    from phinetune.models.tiny import tiny_config

    return tiny_config(SPECS[spec_key(name)], vocab, dict(bos_token_id=0, eos_token_id=0, pad_token_id=0), **sizes)


def save_random_model(name: str, sizes: dict, vocab: int, folder: Path) -> Path:
    """A random-weight checkpoint of the case (config + weights + the built-in tokenizer of its family), so the
    child loads it through train.prepare exactly as a training run loads its base."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from phinetune.models.tiny import build_tokenizer

    logging.disable_progress_bar()  # "Writing model shards" bars would interleave with the table
    AutoModelForCausalLM.from_config(build_config(name, sizes, vocab)).save_pretrained(folder)
    build_tokenizer(SPECS[spec_key(name)]).save_pretrained(folder)
    return folder


def measure(
    name: str, sizes: dict, vocab: int, method: str, seq: int, batch: int, checkpointing: bool, device: str = "cpu"
) -> Measurement:
    """Run the step in a subprocess (a clean heap), and estimate the same run in fp32 (CPU) or bf16 (GPU)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    with tempfile.TemporaryDirectory(prefix="phinetune-plan-") as tmp:
        folder = save_random_model(name, sizes, vocab, Path(tmp) / "model")
        args = json.dumps(
            dict(
                name=name,
                folder=str(folder),
                vocab=vocab,
                method=method,
                seq=seq,
                batch=batch,
                ckpt=checkpointing,
                device=device,
            )
        )
        proc = subprocess.run(
            [sys.executable, "-c", f"from phinetune.bench.plan import _child; _child({args!r})"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement of {name} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    config = build_config(name, sizes, vocab).to_dict()
    facts = ModelFacts(name, config, SPECS[spec_key(name)])
    dtype = "fp32" if device == "cpu" else "bf16"
    est = estimate(facts, method, seq, batch, checkpointing, dtype, r=16, lora_dropout=0.0, device=device)
    return Measurement(name, method, seq, batch, checkpointing, device, est.total, result["peak"] - result["base"])


def _child(args_json: str) -> None:
    """One LoRA/full training step of the model train.prepare loads; prints {"base": bytes, "peak": bytes}."""
    import torch

    from phinetune.config.schema import AdapterConfig, ModelConfig, RunConfig
    from phinetune.kernels.malloc import pin_malloc_thresholds, threshold_for
    from phinetune.train.loss import loss_sum
    from phinetune.train.prepare import prepare

    a = json.loads(args_json)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cuda = a["device"] == "cuda"
    cfg = RunConfig(
        model=ModelConfig(
            name=a["folder"],
            spec=spec_key(a["name"]),
            dtype="bf16" if cuda else "fp32",
            gradient_checkpointing=a["ckpt"],
        ),
        adapter=AdapterConfig(
            method="full" if a["method"] == "full" else "lora",
            r=16,
            alpha=16,
            dropout=0.0,
            targets="all-linear",
            train_new_tokens="off",
        ),
    )  # the estimate counts no token rows
    base = torch.cuda.memory_allocated() if cuda else proc_status("VmRSS")
    model = prepare(cfg, Path(a["folder"]).parent, with_data=False).model.to(a["device"])  # random ids below: no data
    pin_malloc_thresholds(threshold_for(a["batch"] * a["seq"], model.config.hidden_size))  # as train/recipe.py does
    model.train()
    ids = torch.randint(1, a["vocab"], (a["batch"], a["seq"]), device=a["device"])
    positions = torch.arange(a["seq"], device=a["device"]).expand(a["batch"], -1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for step in range(2):  # the second step is the steady state: optimizer states exist during backward
        if step == 1 and cuda:
            torch.cuda.reset_peak_memory_stats()
        elif step == 1:
            reset_peak_rss()  # reset the high-water mark to the current RSS
        loss, n = loss_sum(model, {"input_ids": ids, "labels": ids, "position_ids": positions})  # the recipe's loss
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if cuda else proc_status("VmHWM")
    print(json.dumps({"base": base, "peak": peak}))


def validate(device: str = "cpu", cases=CASES) -> list[Measurement]:
    return [
        measure(name, sizes, vocab, method, seq, batch, ckpt, device)
        for name, sizes, vocab, method, seq, batch, ckpt in cases
    ]


def write_validation(measurements: list[Measurement], out: Path) -> Path:
    """`plan --validate --out`: every measurement with its error, as JSON (read by scripts/gpu_check.sh's report)."""
    from phinetune.bench.machine import machine

    rows = [{**asdict(m), "error": m.error} for m in measurements]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "measurements": rows}, indent=2))
    return out


def print_validation(device: str = "cpu", quick: bool = False, out: Path | None = None) -> list[Measurement]:
    """`plan --validate`: each case's estimate against its measured peak, printed (and written to `out` as JSON);
    `quick`: only the tiny-phi3 cases."""
    from phinetune.progress import console

    if device not in DEVICES:
        raise PhinetuneError(f"plan --device must be one of {', '.join(DEVICES)} (got {device!r})")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PhinetuneError("plan --validate --device cuda needs a CUDA GPU and none is visible; use --device cpu")
    how = "fp32 on CPU, peak RSS" if device == "cpu" else "bf16 on the GPU, torch.cuda.max_memory_allocated"
    console.print(f"plan estimate vs measured peak memory (one steady-state training step, {how}):")
    measurements = validate(device, [c for c in CASES if c[0] == "tiny-phi3"] if quick else CASES)
    for m in measurements:
        console.print(
            f"  {m.name:<13} {m.method:<5} seq {m.seq} x {m.batch}{' ckpt' if m.checkpointing else '     '}  "
            f"estimate {m.estimate_bytes / 2**20:8.1f} MiB  measured {m.measured_bytes / 2**20:8.1f} MiB  error {m.error:+.1%}"
        )
    if out:
        console.print(f"wrote {write_validation(measurements, out)}")
    return measurements
