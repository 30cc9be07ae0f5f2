"""`phinetune bench train --sweep`: what one training step costs as the work grows, in sequence length and layers.

Each point (tokens per row x decoder layers) is one LoRA training step of a random-weight Phi-3-mini-width model
(hidden 3072, intermediate 8192, 32 heads, vocab 32064: the cpu-reference workload's width), run in a fresh
process through train.prepare (the dtype, attention, adapter and gradient-checkpointing choices `train` makes)
and train.loss (the chunked loss `train` uses). A row packs two samples (3/4 and 1/4 of it), so the packed-row
attention path is the one measured. Per point: tokens/s of the measured step, the peak resident memory above
the process's own baseline (taken before the model is built: Python, torch, transformers), `plan`'s estimate
for the same run and its error, whether gradient checkpointing was chosen (`model.gradient_checkpointing:
auto` decides from the plan and the memory this machine has free), and the peak of the tensors the step holds.

A warm-up step on a short row comes first (optimizer states, thread pools), then the high-water mark is reset
(/proc/self/clear_refs) and the measured step runs. Linux only (peak from /proc/self/status VmHWM). The same
step then runs once more under torch's profiler for the tensor peak: its allocator's own events, so the figure
is the same on every run, while the resident peak moves by a few MiB with the heap and the machine's other work
(the profiler's own ~70 MiB would distort the resident figure, hence a step of its own). Whether memory grows
linearly in sequence length is read off the tensor peaks.

Runtime: each point runs its step twice (the resident peak and time, then the tensor peak), estimated from the
step's FLOPs and printed before the sweep starts; 32768 tokens is optional (`--seq 512,2048,8192,32768`): its
4-layer point is the longest by far.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from phinetune import charts
from phinetune.bench.machine import proc_status, reset_peak_rss
from phinetune.bench.workloads import PHI3_TARGETS, WORKLOADS
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.progress import console, say

SPEC = "phi3-mini-4k"
DEFAULT_SEQ = (512, 2048, 8192)
DEFAULT_LAYERS = (1, 2, 4)
WARMUP_TOKENS = 64
# For the printed runtime estimate only (not a measurement): ~60% of the bf16 matmul peak bench train measured
# on the 2-core reference CPU, and the fixed cost of a point (a fresh process loading its model).
ASSUMED_FLOPS = 250e9
POINT_OVERHEAD_S = 15.0


@dataclass(frozen=True)
class Width:
    name: str
    hidden_size: int
    intermediate_size: int
    num_heads: int
    vocab_size: int


_REF = WORKLOADS["cpu-reference"]
WIDTHS = {
    "reference": Width("reference", _REF.hidden_size, _REF.intermediate_size, _REF.num_heads, _REF.vocab_size),
    # For tests: seconds per point, fp32 (below train/precision.py's bf16 width), still weight- and
    # activation-dominated rather than baseline-dominated.
    "tiny": Width("tiny", 256, 768, 4, 4096),
}
CHECKPOINTING = ("auto", "on", "off")  # --checkpointing: as train decides, or always on, or off


@dataclass
class Point:
    seq: int
    layers: int
    checkpointing: bool
    checkpointing_reason: str
    dtype: str
    seconds: float
    tokens: int
    baseline_bytes: int  # the process before the model is built
    peak_bytes: int  # VmHWM of the measured step
    predicted_bytes: float  # plan's estimate of the run (above the baseline)
    tensor_peak_bytes: int  # the most tensor bytes the step held above those it started with (allocator events)

    @property
    def measured_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    @property
    def error(self) -> float:
        """Relative error of plan: positive means it over-estimates."""
        return (self.predicted_bytes - self.measured_bytes) / self.measured_bytes

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "measured_bytes": self.measured_bytes,
            "error": self.error,
            "tokens_per_s": self.tokens_per_s,
        }


def parse_grid(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated integers like 512,2048 (got {text!r})") from None
    if not values or min(values) < 1 or (what == "seq" and min(values) < 16):
        raise ConfigError(
            f"--{what} needs positive integers{' of at least 16 tokens' if what == 'seq' else ''} (got {text!r})"
        )
    return values


def model_config(width: Width, layers: int, max_seq: int):
    from phinetune.models.specs import SPECS
    from phinetune.models.tiny import tiny_config

    return tiny_config(
        SPECS[SPEC],
        width.vocab_size,
        dict(bos_token_id=1, eos_token_id=2, pad_token_id=0),
        hidden_size=width.hidden_size,
        intermediate_size=width.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=width.num_heads,
        max_position_embeddings=max(max_seq, 4096),
    )


def save_model(width: Width, layers: int, max_seq: int, folder: Path) -> Path:
    """A random-weight checkpoint (bf16: half the disk; the child loads it in the dtype train would choose)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from phinetune.models.specs import SPECS
    from phinetune.models.tiny import build_tokenizer

    logging.disable_progress_bar()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(model_config(width, layers, max_seq)).to(torch.bfloat16).save_pretrained(folder)
    build_tokenizer(SPECS[SPEC]).save_pretrained(folder)
    return folder


def step_flops(width: Width, layers: int, seq: int) -> float:
    """Model FLOPs of one step (bench train's count: frozen 4x, attention pairs), for the runtime estimate."""
    from dataclasses import replace

    from phinetune.bench.train import model_flops

    w = replace(
        _REF,
        hidden_size=width.hidden_size,
        intermediate_size=width.intermediate_size,
        num_heads=width.num_heads,
        num_kv_heads=width.num_heads,
        num_layers=layers,
        vocab_size=width.vocab_size,
    )
    return model_flops(w, sample_lengths(seq))


def sample_lengths(seq: int) -> list[int]:
    first = seq * 3 // 4
    return [first, seq - first]


def predicted(width: Width, layers: int, seq: int, checkpointing: bool, dtype: str) -> float:
    from phinetune.models.inspect import ModelFacts
    from phinetune.models.plan import estimate
    from phinetune.models.specs import SPECS

    facts = ModelFacts(f"sweep-{width.name}", model_config(width, layers, seq).to_dict(), SPECS[SPEC])
    return estimate(facts, "lora", seq, 1, checkpointing, dtype, r=16, preset="all-linear", device="cpu").total


def run_point(folder: Path, width: Width, layers: int, seq: int, checkpointing: str) -> Point:
    env = {
        **os.environ,
        "PHINETUNE_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    args = json.dumps(dict(folder=str(folder), vocab=width.vocab_size, seq=seq, checkpointing=checkpointing))
    proc = subprocess.run(
        [sys.executable, "-c", f"from phinetune.bench.sweep import _child; _child({args!r})"],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise PhinetuneError(
            f"bench train --sweep: the point seq {seq} x {layers} layers failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return Point(
        seq,
        layers,
        r["checkpointing"],
        r["reason"],
        r["dtype"],
        r["seconds"],
        r["tokens"],
        r["base"],
        r["peak"],
        predicted(width, layers, seq, r["checkpointing"], r["dtype"]),
        r["tensor_peak"],
    )


def tensor_peak(step: Callable[[], None]) -> int:
    """The most bytes of tensors `step()` holds at once above those alive when it starts.

    Read from the CPU allocator's own allocation and free events, which torch's profiler records in order
    (its event tree: the API its memory timeline is built on), so the figure does not depend on the heap's
    holes, the page cache or what else the machine runs."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, nodes = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))  # negative: a free
        nodes += node.children
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def packed_row(seq: int, vocab: int, seed: int) -> dict:
    """One row of `seq` random tokens packed from two samples (position ids restart; each sample's first token untrained)."""
    import torch

    from phinetune.data.render import IGNORE

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, seq), generator=gen)
    lengths = sample_lengths(seq)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[position_ids == 0] = IGNORE
    return {"input_ids": ids, "labels": labels, "position_ids": position_ids}


def _child(args_json: str) -> None:
    """One warm-up and one measured LoRA step as `train` runs it; prints the figures as one JSON line."""
    import time

    import torch

    from phinetune.config.schema import AdapterConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
    from phinetune.kernels.malloc import pin_malloc_thresholds, threshold_for
    from phinetune.train.loss import loss_sum
    from phinetune.train.precision import adapter_autocast, adapter_compute_dtype, adapter_recompute
    from phinetune.train.prepare import prepare

    a = json.loads(args_json)
    ckpt = {"on": True, "off": False}.get(a["checkpointing"], "auto")
    cfg = RunConfig(
        model=ModelConfig(name=a["folder"], spec=SPEC, gradient_checkpointing=ckpt),
        data=DataConfig(max_length=a["seq"]),
        train=TrainConfig(batch_size=1),
        adapter=AdapterConfig(
            method="lora", r=16, alpha=16, dropout=0.05, targets=list(PHI3_TARGETS), train_new_tokens="off"
        ),
    )
    base = proc_status("VmRSS")
    prepared = prepare(cfg, Path(a["folder"]).parent, with_data=False)
    model = prepared.model
    pin_malloc_thresholds(threshold_for(a["seq"], model.config.hidden_size))  # as train/recipe.py does
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    adapter_dtype = adapter_compute_dtype(cfg, prepared.dtype)

    def step(batch):  # as the SFT step (train/objectives/sft.py): adapters in bf16 under a bf16 base on CPU
        with adapter_autocast(model, adapter_dtype):
            loss, n = loss_sum(model, batch)
        with adapter_recompute(model, adapter_dtype):
            (loss / max(n, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(packed_row(WARMUP_TOKENS, a["vocab"], 1))
    batch = packed_row(a["seq"], a["vocab"], 0)
    reset_peak_rss()  # the high-water mark restarts at the current RSS
    start = time.perf_counter()
    step(batch)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM")
    tensors = tensor_peak(lambda: step(batch))  # after the resident peak is read: the profiler's memory stays out of it
    choice = prepared.checkpointing
    print(
        json.dumps(
            {
                "base": base,
                "peak": peak,
                "seconds": seconds,
                "tokens": a["seq"],
                "tensor_peak": tensors,
                "checkpointing": choice.on,
                "reason": choice.reason,
                "dtype": prepared.dtype.name,
            }
        )
    )


def print_header() -> None:
    say(
        f"{'tokens':>7} {'layers':>6} {'dtype':>5} {'ckpt':>4} {'tokens/s':>9} {'peak RSS':>9} {'measured':>9} {'plan':>9} {'error':>7} {'tensors':>9}"
    )


def print_row(p: Point) -> None:
    say(
        f"{p.seq:7d} {p.layers:6d} {p.dtype:>5} {'on' if p.checkpointing else 'off':>4} {p.tokens_per_s:9.1f} "
        f"{p.peak_bytes / 2**30:5.2f} GiB {p.measured_bytes / 2**30:5.2f} GiB {p.predicted_bytes / 2**30:5.2f} GiB {p.error:+7.1%} "
        f"{p.tensor_peak_bytes / 2**30:5.2f} GiB"
    )


def linearity(points: list[Point], figure: str = "tensor_peak_bytes") -> dict[int, list[float]]:
    """Per layer count, the memory added per extra token between consecutive sequence lengths (bytes/token), from
    the tensor peaks (or another figure of Point): equal steps mean memory linear in length; growing steps, a
    seq x seq term."""
    out = {}
    for layers in sorted({p.layers for p in points}):
        row = sorted((p for p in points if p.layers == layers and not p.checkpointing), key=lambda p: p.seq)
        out[layers] = [(getattr(b, figure) - getattr(a, figure)) / (b.seq - a.seq) for a, b in zip(row, row[1:])]
    return out


def plot(points: list[Point], path: Path) -> Path:
    series = []
    for i, layers in enumerate(sorted({p.layers for p in points})):
        row = sorted((p for p in points if p.layers == layers), key=lambda p: p.seq)
        name = f"{layers} layer{'s' if layers > 1 else ''}"
        series.append(charts.Line(f"{name}: measured", [(p.seq, p.measured_bytes / 2**30) for p in row], f"C{i}o-"))
        series.append(charts.Line(f"{name}: plan", [(p.seq, p.predicted_bytes / 2**30) for p in row], f"C{i}x--"))
    title = "Peak memory of one training step (above the process baseline)"
    panel = charts.Panel(title, "tokens per row", "GiB", tuple(series))
    return charts.save([panel], path, size=(6.4, 3.8))


def estimate_runtime(width: Width, seqs, layers) -> float:
    return sum(
        2 * step_flops(width, n, s) / ASSUMED_FLOPS + POINT_OVERHEAD_S for s in seqs for n in layers
    )  # 2 steps a point


def bench_sweep(
    width: str = "reference",
    seqs=DEFAULT_SEQ,
    layers=DEFAULT_LAYERS,
    out: str | None = None,
    work_dir: str | None = None,
    checkpointing: str = "auto",
) -> list[Point]:
    if width not in WIDTHS:
        raise ConfigError(f"bench train --sweep --width '{width}' is unknown; choose one of {', '.join(WIDTHS)}")
    if checkpointing not in ("auto", "on", "off"):
        raise ConfigError(f"bench train --sweep --checkpointing must be auto, on or off (got {checkpointing!r})")
    if not Path("/proc/self/clear_refs").exists():
        raise PhinetuneError("bench train --sweep measures peak memory through /proc/self (Linux only)")
    w = WIDTHS[width]
    say(
        f"sweep: width {w.name} (hidden {w.hidden_size}, intermediate {w.intermediate_size}, {w.num_heads} heads, vocab {w.vocab_size}), "
        f"tokens {','.join(map(str, seqs))} x layers {','.join(map(str, layers))}, LoRA r16 on {','.join(PHI3_TARGETS)}; "
        f"estimated runtime ~{estimate_runtime(w, seqs, layers) / 60:.0f} min at {ASSUMED_FLOPS / 1e9:.0f} GFLOP/s"
    )
    work = Path(work_dir or tempfile.mkdtemp(prefix="phinetune-sweep-"))
    points = []
    print_header()
    for n in layers:
        with console.status(f"sweep: building the {n}-layer model"):
            folder = save_model(w, n, max(seqs), work / f"model-{n}")
        for seq in seqs:
            with console.status(f"sweep: {seq} tokens x {n} layers"):
                points.append(run_point(folder, w, n, seq, checkpointing))
            print_row(points[-1])
    say(
        "measured = peak RSS above the process baseline (before the model is built); plan = `plan`'s estimate of the same run; "
        "tensors = the most tensor bytes the step held (torch's allocator events: the same on every run); "
        f"each point's checkpointing reason is in the JSON (the last: {points[-1].checkpointing_reason})"
    )
    steps, resident = linearity(points), linearity(points, "measured_bytes")
    for n, row in steps.items():
        if row:
            say(
                f"{n} layers: memory added per token between consecutive lengths: tensors "
                + ", ".join(f"{b / 1024:.1f}" for b in row)
                + " KiB; resident "
                + ", ".join(f"{b / 1024:.1f}" for b in resident[n])
                + " KiB"
            )
    base = Path(out) if out else work / "sweep.json"
    png = plot(points, base.with_suffix(".png"))
    report = {
        "width": asdict(w),
        "points": [p.to_json() for p in points],
        "bytes_per_token_steps": steps,
        "resident_bytes_per_token_steps": resident,
        "png": str(png),
        "speed_note": "tokens/s from one step each; not an idle-machine figure unless the load says so",
    }
    from phinetune.bench.machine import machine

    report["machine"] = machine()
    base.write_text(json.dumps(report, indent=2))
    say(f"wrote {base} and {png}")
    return points
