"""One side of `phinetune bench train`, run in its own process so its peak memory is its own.

    python -m phinetune.bench.train_child {baseline|trl-tuned|phinetune} SPEC.json RESULT.json

Every side starts from the same saved model, the same token ids and the same LoRA initialisation
(`reseed_lora`), and each proves it trained: non-zero gradients reached every LoRA tensor and every
LoRA tensor changed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch


def reseed_lora(model, seed: int) -> None:
    """The same LoRA A init in both processes whatever RNG calls came before (B stays zero, as PEFT sets it)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_A" in name:
            with torch.no_grad():
                fresh = torch.empty(p.shape, dtype=torch.float32)
                bound = 1.0 / (p.shape[1] ** 0.5)
                fresh.uniform_(-bound, bound, generator=gen)
                p.copy_(fresh.to(p.dtype))


class TrainingProof:
    """Records gradient norms as they accumulate and compares LoRA weights before/after."""

    def __init__(self, model):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
        self.before = {n: p.detach().float().clone() for n, p in self.params.items()}
        self.grad_seen = {n: 0.0 for n in self.params}
        for n, p in self.params.items():
            p.register_post_accumulate_grad_hook(lambda t, n=n: self._seen(n, t))

    def _seen(self, name, tensor):
        if tensor.grad is not None:
            self.grad_seen[name] = max(self.grad_seen[name], float(tensor.grad.detach().abs().max()))

    def report(self) -> dict:
        changed = {n: float((p.detach().float() - self.before[n]).abs().max()) for n, p in self.params.items()}
        return {
            "lora_tensors": len(self.params),
            "zero_grad_tensors": sorted(n for n, g in self.grad_seen.items() if not g > 0),
            "unchanged_tensors": sorted(n for n, c in changed.items() if not c > 0),
            "max_grad": max(self.grad_seen.values(), default=0.0),
            "max_change": max(changed.values(), default=0.0),
        }


def peak_memory(device: str) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    out = {"peak_rss": rss}
    if device == "cuda":
        out["peak_gpu"] = torch.cuda.max_memory_allocated()
    return out


class Timed:
    """Wall seconds of the training call, and its CPU user/system seconds: system time is the kernel's share
    (page faults of freshly mapped tensors), and CPU time moves less with other processes' load than wall time."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        sync(self.cuda)
        self.usage, self.start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.cuda)
        end, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        self.figures = {
            "seconds": end - self.start,
            "cpu_user_s": usage.ru_utime - self.usage.ru_utime,
            "cpu_sys_s": usage.ru_stime - self.usage.ru_stime,
        }


def run_baseline(spec: dict) -> dict:
    """The common recipe: TRL SFTTrainer + PEFT LoRA (QLoRA on GPU), padding to the longest sample, no packing."""
    return run_trl(spec, tuned=False)


def run_trl_tuned(spec: dict) -> dict:
    """TRL as a user who knows it runs it: bf16 frozen base (PEFT keeps LoRA fp32), bf16 autocast, BFD packing,
    which in TRL 1.16 turns on padding-free batches (one flattened row per batch, boundaries in position_ids:
    transformers builds the block-diagonal mask on sdpa, so no flash-attention is needed on CPU), fused AdamW,
    and Liger's layer kernels where they run (CUDA, with liger-kernel installed)."""
    return run_trl(spec, tuned=True)


def liger_available(cuda: bool) -> bool:
    from phinetune.extras import installed

    return cuda and installed("liger_kernel")


def run_trl(spec: dict, tuned: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    w, cuda = spec["workload"], spec["workload"]["device"] == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    tokenizer.pad_token = tokenizer.unk_token or tokenizer.pad_token or tokenizer.eos_token  # as the common recipe does
    tokenizer.padding_side = "left"
    kwargs = {"dtype": torch.bfloat16 if cuda or tuned else torch.float32}
    if w["quant"] == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], **kwargs)
    if w["quant"] == "nf4":  # turns gradient checkpointing on, for both TRL sides alike
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": True})
    samples = [{"input_ids": ids} for ids in spec["token_ids"]]  # the very ids phinetune trains on
    dropout = 0.0 if spec["parity"] and not tuned else w["lora_dropout"]
    peft_config = LoraConfig(
        r=w["lora_r"],
        lora_alpha=w["lora_alpha"],
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=list(w["targets"]),
    )
    speed = (
        {
            "packing": True,
            "packing_strategy": "bfd",
            "padding_free": True,
            "bf16": True,
            "optim": "adamw_torch_fused",
            "use_liger_kernel": liger_available(cuda),
        }
        if tuned
        else {
            "packing": False,
            "bf16": cuda and torch.cuda.is_bf16_supported(),
            "optim": "paged_adamw_8bit" if cuda else "adamw_torch",
        }
    )
    args = SFTConfig(
        output_dir=str(Path(spec["work"]) / "trl"),
        per_device_train_batch_size=w["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=w["learning_rate"],
        num_train_epochs=1,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_length=w["max_length"],
        dataset_text_field="text",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        fp16=False,
        seed=w["seed"],
        use_cpu=not cuda,
        disable_tqdm=True,
        **speed,
    )
    trainer = SFTTrainer(
        model=model,
        train_dataset=Dataset.from_list(samples),
        peft_config=peft_config,
        processing_class=tokenizer,
        args=args,
    )
    if spec["parity"] and not tuned:
        # Same batches in the same order as phinetune's (ids were written in its batch order).
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    reseed_lora(trainer.model, w["seed"])
    proof = TrainingProof(trainer.model)
    with Timed(cuda) as timed:
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = sum(len(ids) for ids in spec["token_ids"])
    base = next(p.dtype for n, p in trainer.model.named_parameters() if "qkv_proj.base_layer" in n)
    lora = next(p.dtype for n, p in trainer.model.named_parameters() if "lora_A" in n)
    options = dict(speed) | {"rows": len(trainer.train_dataset), "lora_dtype": DTYPE_NAMES.get(lora, str(lora))}
    return {
        **timed.figures,
        "tokens": tokens,
        "losses": losses,
        "proof": proof.report(),
        "dtype": DTYPE_NAMES.get(base, str(base)),
        "autocast": "bf16" if args.bf16 else None,
        "options": options,
        "padded_tokens": None,
        **peak_memory(w["device"]),
    }


def phinetune_config(spec: dict):
    from phinetune.config import load_config

    w = spec["workload"]
    overrides = [
        f"model.name={spec['model_dir']}",
        "model.spec=phi3-mini-4k",
        f"model.quant={w['quant']}",
        f"data.train={spec['data_file']}",
        "data.format=text",
        "data.eval_fraction=0.0",
        "data.dedupe=false",
        f"data.max_length={w['max_length']}",
        f"adapter.targets=[{','.join(w['targets'])}]",
        f"adapter.r={w['lora_r']}",
        f"adapter.alpha={w['lora_alpha']}",
        f"adapter.dropout={0.0 if spec['parity'] else w['lora_dropout']}",
        f"train.batch_size={w['batch_size']}",
        f"train.learning_rate={w['learning_rate']}",
        "train.epochs=1",
        "train.warmup_ratio=0.0",
        "train.scheduler=linear",
        "train.log_every=1",
        "train.eval_every=1000000",
        f"train.seed={w['seed']}",
        f"output.dir={Path(spec['work']) / 'run'}",
        "output.overwrite=true",
        "preflight.allow_untrained_eot=true",
        *w["phinetune_overrides"],
    ]
    if spec["parity"]:
        overrides += ["model.dtype=fp32", "data.packing=false"]
    return load_config(None, overrides)


def run_phinetune(spec: dict) -> dict:
    """phinetune's own training loop with its DEFAULTS (packing, dtype auto, fast loss), on the same tokens."""
    from phinetune.train import recipe

    w, cuda = spec["workload"], spec["workload"]["device"] == "cuda"
    loop = recipe.setup(phinetune_config(spec))
    got = [list(r.input_ids) for r in loop.data.train]
    if sorted(map(tuple, got)) != sorted(map(tuple, spec["token_ids"])):
        raise SystemExit("phinetune tokenized the data differently from the ids given to the baseline")
    reseed_lora(loop.accelerator.unwrap_model(loop.model), w["seed"])
    proof = TrainingProof(loop.model)
    with Timed(cuda) as timed:
        recipe.run_steps(loop)
    losses = [m["loss"] for m in loop.run.read_metrics() if "loss" in m]
    tokens = sum(len(r) for r in loop.train_rows)
    dtype = next(p.dtype for n, p in loop.model.named_parameters() if "qkv_proj.base_layer" in n)
    result = {
        **timed.figures,
        "tokens": tokens,
        "losses": losses,
        "proof": proof.report(),
        "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "rows": len(loop.train_rows),
        **peak_memory(w["device"]),
    }
    if spec.get("profile"):  # after the timed run and its peak memory, so profiling costs neither
        from phinetune.bench.step_profile import profile_steps

        steps = list(range(min(PROFILE_STEPS, loop.total_steps)))  # the first steps' batches again (pure in the step)
        result["profile"] = profile_steps(loop.model, lambda i: loop.objective.step(loop, i), steps)
    return result


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


PROFILE_STEPS = 2
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.uint8: "nf4"}
RUNNERS = {"baseline": run_baseline, "trl-tuned": run_trl_tuned, "phinetune": run_phinetune}


def main(argv: list[str]) -> None:
    side, spec_file, result_file = argv
    spec = json.loads(Path(spec_file).read_text())
    result = RUNNERS[side](spec)
    Path(result_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
