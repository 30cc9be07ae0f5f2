"""Interleaved A/B of the LoRA branch of a training step at the CPU reference shapes (docs/speed.md).

The four LoRA'd Linears of one Phi-3-mini layer (qkv 3072->9216, o 3072->3072, gate_up 3072->16384, down
8192->3072), r=16, dropout 0.05, 8 x 512 tokens, bf16 base under the adapters' bf16 autocast, forward + backward
of the LoRA branch only (the base matmul's output is made beforehand: it is the same in every variant and would
bury the difference in its noise on a shared machine). Variants, on PEFT's real LoRA layers:

    peft        PEFT's line `result + lora_B(lora_A(dropout(x))) * scaling`, torch's nn.Dropout
    positions   the same line with kernels/lora_dropout.py's PositionDropout
    addmm       PositionDropout and kernels/lora_addmm.py's variant (lora_B's product, scaled, added in place into
                the base output by baddbmm_)

Each repetition runs every variant once, in turn; printed: the median seconds per variant, the median of the
per-repetition ratios peft / variant, and uptime's load before and after.

    PYTHONPATH=src python scripts/lora_branch_ab.py [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from phinetune.kernels.lora_addmm import AddmmLoraVariant
from phinetune.kernels.lora_dropout import install_lora_dropout
from phinetune.train.precision import adapter_autocast

BATCH, SEQ = 8, 512
SHAPES = [(3072, 9216), (3072, 3072), (3072, 16384), (8192, 3072)]


def layers(position_dropout: bool):
    out = []
    for d_in, d_out in SHAPES:
        model = get_peft_model(
            torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=False)).to(torch.bfloat16),
            LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["0"], init_lora_weights=False),
        )
        if position_dropout:
            install_lora_dropout(model)
        model.train()
        out.append((model, model.base_model.model[0]))
    return out


def peft_line(layer, x, result):
    return (
        result
        + layer.lora_B["default"](layer.lora_A["default"](layer.lora_dropout["default"](x))) * layer.scaling["default"]
    )


def addmm(layer, x, result):
    return AddmmLoraVariant.forward(layer, "default", x, result)


def step(stack, branch, xs, results, grads) -> float:
    start = time.perf_counter()
    for (model, layer), x, result, grad in zip(stack, xs, results, grads):
        with adapter_autocast(model, torch.bfloat16):
            y = branch(layer, x, result)
        y.backward(grad)
        x.grad = None
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    xs = [torch.randn(BATCH, SEQ, d_in, dtype=torch.bfloat16, requires_grad=True) for d_in, _ in SHAPES]
    grads = [torch.randn(BATCH, SEQ, d_out, dtype=torch.bfloat16) for _, d_out in SHAPES]
    torch_drop, positions = layers(False), layers(True)
    variants = {"peft": (torch_drop, peft_line), "positions": (positions, peft_line), "addmm": (positions, addmm)}
    print("load before:", os.getloadavg())
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        for name, (stack, branch) in variants.items():
            # a fresh base output per run, made outside the timing; it needs no grad here: every variant hands the
            # base output's gradient on unchanged (add and beta=1 both pass it through) to the base matmul's backward
            results = [torch.randn(BATCH, SEQ, d_out, dtype=torch.bfloat16) for _, d_out in SHAPES]
            seconds = step(stack, branch, xs, results, grads)
            if rep:
                times[name].append(seconds)
    print("load after:", os.getloadavg())
    print("median s:", {k: round(statistics.median(v), 3) for k, v in times.items()})
    print(
        "median ratio peft/x:",
        {k: round(statistics.median(a / b for a, b in zip(times["peft"], v)), 2) for k, v in times.items()},
    )


if __name__ == "__main__":
    main()
