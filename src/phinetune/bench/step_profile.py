"""Where a training step's time goes, from a real torch.profiler trace (`phinetune bench train --profile`).

Each op's own (self) CPU time is charged to one part:

    matmuls    the frozen base matmuls (each LoRA layer's `base_layer`, and `lm_head`)
    attention  the rest of each `self_attn` (rotary, sdpa, reshapes)
    LoRA       `lora_dropout`, `lora_A`, `lora_B` and the adapter's cast / scale / add around them
    loss       cross-entropy over the head's chunks (the head matmul itself counts as matmuls)
    optimizer  gradient clipping, optimizer and scheduler step, zero_grad
    data       collate and the copy to the device
    other      norms, activation, embeddings, residual adds, and time in no op (Python)

Forward ops are charged by the module they ran in (forward hooks open a `record_function` scope per module,
the innermost scope wins). A backward op runs outside any module, so it is charged like the forward op that
created its autograd node: the profiler gives both the same sequence number. Nothing is estimated: a part is
the sum of the measured self times of its ops, and `other` includes the step's wall time no op accounts for.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

PARTS = ("matmuls", "attention", "LoRA", "loss", "optimizer", "data", "other")
SCOPE = "phinetune."  # record_function names this module and the training step open
BACKWARD = "autograd::engine::evaluate_function"
TOP_OPS = 4  # ops named per part in the table and the JSON


def part_of_module(name: str) -> str | None:
    """The part a module's own forward belongs to, from its qualified name (None: the enclosing module decides)."""
    leaf = name.rsplit(".", 2)
    if any(p.startswith(("lora_A", "lora_B", "lora_dropout", "lora_magnitude")) for p in leaf[-2:]):
        return "LoRA"
    if name.endswith("base_layer") or name.endswith("lm_head"):
        return "matmuls"
    if name.endswith("self_attn"):
        return "attention"
    if any(
        name.endswith(t)
        for t in (
            "qkv_proj",
            "o_proj",
            "gate_up_proj",
            "down_proj",
            "q_proj",
            "k_proj",
            "v_proj",
            "dense",
            "fc1",
            "fc2",
            "up_proj",
            "gate_proj",
        )
    ):
        return "LoRA"  # a LoRA layer's own code: the input cast, scaling and add around base_layer and the adapters
    return None


@contextlib.contextmanager
def module_scopes(model: torch.nn.Module):
    """Open a record_function scope named `phinetune.<part>` around the forward of every module that has a part."""
    handles, stacks = [], {}
    for name, module in model.named_modules():
        part = part_of_module(name)
        if part is None:
            continue

        def enter(mod, args, part=part):
            scope = torch.profiler.record_function(SCOPE + part)
            scope.__enter__()
            stacks.setdefault(id(mod), []).append(scope)

        def leave(mod, args, output):
            stacks[id(mod)].pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _scope_part(event) -> str | None:
    """The innermost phinetune scope above an event, or None; stops at a backward node (charged by its sequence nr)."""
    while event is not None:
        if event.name.startswith(SCOPE):
            part = event.name[len(SCOPE) :]
            return part if part in PARTS else "other"
        if event.name.startswith(BACKWARD):
            return None
        event = event.cpu_parent
    return None


def _backward_node(event):
    while event is not None:
        if event.name.startswith(BACKWARD):
            return event
        event = event.cpu_parent
    return None


def split_events(events, ops: dict | None = None) -> dict[str, float]:
    """Seconds of self CPU time per part over a list of profiler FunctionEvents (see the module docstring);
    `ops`, when given, is filled with part -> {op name: seconds}."""
    # Every op is stamped with the sequence number the NEXT autograd node will take, so several forward ops share
    # one; the node's creator is the last of them to start (the counter moves on as the node is made).
    forward_part: dict[int, tuple[float, str]] = {}  # sequence nr -> (start time, part) of its latest forward op
    for e in events:
        if e.sequence_nr >= 0 and _backward_node(e) is None:
            part, start = _scope_part(e), e.time_range.start
            if part is not None and start >= forward_part.get(e.sequence_nr, (float("-inf"), ""))[0]:
                forward_part[e.sequence_nr] = (start, part)
    out = dict.fromkeys(PARTS, 0.0)
    for e in events:
        node = _backward_node(e)
        if node is None:
            part = _scope_part(e) or "other"
        else:
            # An op inside a backward node that itself runs in a scope (the loss computes its gradients in its
            # forward) keeps the node's forward part; a node with no recorded forward falls back to the scope.
            part = forward_part.get(node.sequence_nr, (0, None))[1] or _scope_part(node.cpu_parent) or "other"
        out[part] += e.self_cpu_time_total / 1e6
        if ops is not None:
            ops.setdefault(part, {})
            ops[part][e.name] = ops[part].get(e.name, 0.0) + e.self_cpu_time_total / 1e6
    return out


def profile_steps(model: torch.nn.Module, step: Callable[[int], None], steps: list[int]) -> dict:
    """Run `step(i)` for each i under the profiler; the split of their wall time into PARTS, in seconds and shares."""
    from torch.profiler import ProfilerActivity, profile

    with module_scopes(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for i in steps:
            with torch.profiler.record_function(SCOPE + "other"):
                step(i)
        wall = time.perf_counter() - start
    ops: dict = {}
    seconds = split_events(prof.events(), ops)
    seconds["other"] += max(0.0, wall - sum(seconds.values()))  # time no op took: Python between ops
    top = {part: dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:TOP_OPS]) for part, by_op in ops.items()}
    return {
        "steps": len(steps),
        "wall_s": wall,
        "seconds": seconds,
        "share": {k: v / wall if wall > 0 else 0.0 for k, v in seconds.items()},
        "top_ops": top,
    }


def format_split(split: dict) -> list[str]:
    per_step = split["wall_s"] / max(split["steps"], 1)
    lines = [
        f"profile: {split['steps']} phinetune steps, {per_step:.3f} s per step (torch.profiler, self CPU time per op; "
        "profiling slows every op a little)"
    ]
    lines.append(f"{'part':10} {'s/step':>8} {'share':>7}  largest ops (self time, share of the step)")
    for part in PARTS:
        top = ", ".join(
            f"{name} {100 * t / split['wall_s']:.1f}%"
            for name, t in split.get("top_ops", {}).get(part, {}).items()
            if split["wall_s"] > 0
        )
        lines.append(
            f"{part:10} {split['seconds'][part] / max(split['steps'], 1):8.3f} {100 * split['share'][part]:6.1f}%  {top}"
        )
    return lines
