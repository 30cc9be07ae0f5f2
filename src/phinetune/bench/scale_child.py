"""One rank of `phinetune bench train --nproc N`, started by the same launcher as `phinetune train --nproc N`.

    python -m phinetune.bench.scale_child SPEC.json RESULT_DIR     (under torchrun / accelerate launch)

Every rank trains phinetune's own loop on the workload (the phinetune side of `bench train`, with its defaults)
and writes RESULT_DIR/rank-R.json: its wall time over the training steps, the real tokens of its own
micro-batches, and its own peak memory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def rank_tokens(loop) -> int:
    """Real tokens this rank trains over the whole run (its micro-batches are a pure function of seed and step)."""
    from phinetune.train.loop import micro_batches

    return sum(len(row) for step in range(loop.total_steps) for rows in micro_batches(loop, step) for row in rows)


def base_dtype(model, names: dict) -> str:
    """The frozen base weights' dtype (what the workload trains in): the first parameter that is not trained."""
    dtype = next((p.dtype for p in model.parameters() if not p.requires_grad), next(model.parameters()).dtype)
    return names.get(dtype, str(dtype))


def main(argv: list[str]) -> None:
    from phinetune.bench.train_child import DTYPE_NAMES, peak_memory, phinetune_config, sync
    from phinetune.train import recipe

    spec_file, result_dir = argv
    spec = json.loads(Path(spec_file).read_text())
    cuda = spec["workload"]["device"] == "cuda"
    loop = recipe.setup(phinetune_config(spec))
    acc = loop.accelerator
    tokens = rank_tokens(loop)
    acc.wait_for_everyone()  # every rank starts the clock together
    sync(cuda)
    start = time.perf_counter()
    recipe.run_steps(loop)
    sync(cuda)
    seconds = time.perf_counter() - start
    losses = [m["loss"] for m in loop.run.read_metrics() if "loss" in m] if acc.is_main_process else []
    engine = (
        "FSDP2" if loop.sharded else str(acc.distributed_type).split(".")[-1]
    )  # CPU FSDP2 runs under accelerate's MULTI_CPU
    result = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "engine": engine,
        "sharded": loop.sharded,
        "seconds": seconds,
        "tokens": tokens,
        "steps": loop.total_steps,
        "losses": losses,
        "threads": torch.get_num_threads(),
        "dtype": base_dtype(loop.model, DTYPE_NAMES),
        **peak_memory(spec["workload"]["device"]),
    }
    Path(result_dir, f"rank-{acc.process_index}.json").write_text(json.dumps(result))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1:])
