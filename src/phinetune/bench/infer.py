"""`phinetune bench infer`: memory and speed of generation per dtype (bf16, fp16, fp32, nf4), measured, not estimated.

Per dtype: bytes of weights (exact, from the tensors), memory after load, peak memory during generation,
time to first token (prefill) and decode tokens/s at each batch size. On a GPU also the share of the
memory-bandwidth limit reached at decode: every decode step reads all weights once, so
weight_bytes x steps/s is the bandwidth used, compared with the device's (measured copy bandwidth and,
for known GPUs, the datasheet figure).

Memory: on CUDA, torch's allocator counters (exact). On CPU there are none, so each dtype runs in a forked
child process and memory is its resident set (RSS, sampled every 2 ms) above the child's RSS before loading.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from rich.table import Table
from transformers.generation.streamers import BaseStreamer

from phinetune.bench.machine import machine
from phinetune.errors import PhinetuneError
from phinetune.progress import console, escape, print_table

BENCH_DTYPES = {"bf16": ("bf16", "none"), "fp16": ("fp16", "none"), "fp32": ("fp32", "none"), "nf4": ("auto", "nf4")}

# Datasheet memory bandwidth (GB/s) by a substring of torch.cuda.get_device_name(); first match wins,
# so more specific names come first.
GPU_BANDWIDTH_GBS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935,
                     "A100": 1555, "L40S": 864, "L4": 300, "A10G": 600, "A10": 600, "T4": 320, "V100": 900,
                     "RTX 4090": 1008, "RTX 3090": 936}

PROMPT_TEXT = "Riddle me this: what has keys but cannot open locks, and a face and two hands but no arms? "


@dataclass
class BenchSettings:
    prompt_tokens: int = 128
    new_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.new_tokens < 2 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise PhinetuneError("bench infer needs --prompt-tokens >= 1, --new-tokens >= 2 and batch sizes >= 1")


@dataclass
class BatchResult:
    batch: int
    ttft_s: float  # prompt in -> first new token out (the prefill of the whole batch)
    decode_tokens_per_s: float  # new tokens of all sequences per second, after the first
    peak_mb: float  # peak memory during this generation (weights included)
    bandwidth_gbs: float  # weight bytes read per decode step x decode steps/s
    bandwidth_ratio: Optional[float]  # of the device limit, GPU only


@dataclass
class DtypeResult:
    dtype: str
    compute_dtype: str
    weight_mb: float
    after_load_mb: float
    batches: list[BatchResult]


class _Timestamps(BaseStreamer):
    """Records when each step's tokens come out (generate's first `put` is the prompt itself)."""

    def __init__(self, sync: Callable[[], None]):
        self.times: list[float] = []
        self.sync = sync

    def put(self, value) -> None:
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class _RssPeak:
    """Samples this process's RSS in a thread: CPU memory has no allocator counters to ask."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "_RssPeak":
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


MB = 1024 * 1024


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers as stored (4-bit weights count as their packed uint8 storage)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def device_bandwidth() -> dict:
    """The GPU's memory bandwidth: measured with a large device-to-device copy, plus the datasheet value when known."""
    if not torch.cuda.is_available():
        return {}
    name = torch.cuda.get_device_name()
    src = torch.empty(512 * MB, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    measured = 2 * src.numel() * reps / (time.perf_counter() - start) / 1e9  # read + write
    del src, dst
    torch.cuda.empty_cache()
    spec = next((gbs for key, gbs in GPU_BANDWIDTH_GBS.items() if key in name), None)
    return {"device": name, "measured_copy_gbs": round(measured, 1), "datasheet_gbs": spec}


def bench_one(target: str, name: str, settings: BenchSettings, limit_gbs: Optional[float]) -> DtypeResult:
    """Load `target` in one dtype, then time and measure generation at each batch size."""
    from phinetune.runs.loading import load_for_inference

    cuda = torch.cuda.is_available()
    dtype, quant = BENCH_DTYPES[name]
    base = torch.cuda.memory_allocated() if cuda else _rss()
    loaded = load_for_inference(target, dtype, quant)
    after = (torch.cuda.memory_allocated() if cuda else _rss()) - base
    model, wbytes = loaded.model, weight_bytes(loaded.model)
    device = next(model.parameters()).device
    ids = _prompt_ids(loaded.tokenizer, settings.prompt_tokens).to(device)
    _generate(model, ids[:, :8], 2, lambda: None)  # warm-up: kernels, caches, lazy init
    batches = []
    for b in settings.batch_sizes:
        stamps, peak = _measure(model, ids.repeat(b, 1), settings.new_tokens, cuda, base)
        # times: [call, prompt handed to the streamer, token 1, ..., token N]
        first, last = stamps.times[2], stamps.times[-1]
        steps_per_s = (len(stamps.times) - 3) / (last - first)
        bandwidth = wbytes * steps_per_s / 1e9
        batches.append(BatchResult(b, first - stamps.times[0], b * steps_per_s, peak / MB, bandwidth,
                                   bandwidth / limit_gbs if limit_gbs else None))
    compute = str(next(p for p in model.parameters() if p.is_floating_point()).dtype).replace("torch.", "")
    return DtypeResult(name, compute, wbytes / MB, after / MB, batches)


def _measure(model, ids, new_tokens: int, cuda: bool, base: int):
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        stamps = _generate(model, ids, new_tokens, torch.cuda.synchronize)
        return stamps, torch.cuda.max_memory_allocated() - base
    with _RssPeak() as rss:
        stamps = _generate(model, ids, new_tokens, lambda: None)
    return stamps, rss.peak - base


@torch.no_grad()
def _generate(model, ids, new_tokens: int, sync) -> _Timestamps:
    stamps = _Timestamps(sync)
    stamps.times.append(time.perf_counter())
    # min_new_tokens = max_new_tokens: every run decodes exactly the same number of steps (no early stop).
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, streamer=stamps, pad_token_id=model.config.pad_token_id or 0)
    return stamps


def _prompt_ids(tokenizer, n: int) -> torch.Tensor:
    ids = tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor([(ids * (n // len(ids) + 1))[:n]])


def _in_child(fn, *args):
    """Run fn in a forked child so its memory is measured from a clean baseline and freed afterwards."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target():
        try:
            child.send(("ok", fn(*args)))
        except BaseException as exc:  # report, do not hang the parent
            child.send(("error", f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=target)
    proc.start()
    status, value = parent.recv() if parent.poll(3600) else ("error", "no result within an hour")
    proc.join()
    if status != "ok":
        raise PhinetuneError(f"bench infer failed for {args[1]}: {value}")
    return value


def bench_infer(target: str, dtypes: list[str], settings: BenchSettings, out: Path) -> dict:
    unknown = [d for d in dtypes if d not in BENCH_DTYPES]
    if unknown or not dtypes:
        raise PhinetuneError(f"--dtype: unknown {unknown or 'empty list'}; choose from {', '.join(BENCH_DTYPES)} (comma-separated)")
    cuda = torch.cuda.is_available()
    if not cuda:
        try:
            import psutil  # noqa: F401
        except ImportError:
            raise PhinetuneError("bench infer on CPU measures memory with psutil: pip install 'phinetune[bench]'") from None
    bandwidth = device_bandwidth()
    limit = bandwidth.get("datasheet_gbs") or bandwidth.get("measured_copy_gbs")
    if not cuda and "nf4" in dtypes:
        import bitsandbytes  # noqa: F401  imported here, so the children's memory does not count the library
    from phinetune.runs.loading import load_for_inference  # noqa: F401  same: libraries load before the baseline

    results, skipped = [], {}
    for name in dtypes:
        with console.status(f"bench infer: {name}"):
            run = (lambda: bench_one(target, name, settings, limit)) if cuda else (lambda: _in_child(bench_one, target, name, settings, limit))
            try:
                results.append(run())
            except PhinetuneError as exc:  # e.g. a dtype the model's spec refuses (Phi-2 in fp16): the others still run
                skipped[name] = str(exc)
                console.print(f"[yellow]skipped {escape(name)}:[/yellow] {escape(str(exc))}", markup=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if not results:
        raise PhinetuneError(f"bench infer: no dtype could be measured ({skipped})")
    report = {"model": target, "settings": asdict(settings), "machine": machine(), "bandwidth": bandwidth, "skipped": skipped,
              "memory_method": "torch.cuda allocator (exact)" if cuda else "process RSS above the pre-load baseline (sampled every 2 ms)",
              "results": [asdict(r) for r in results]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(render_table(report))
    console.print(f"JSON written to {out}")
    return report


def render_table(report: dict) -> Table:
    s = report["settings"]
    where = report["machine"].get("gpu") or f"CPU, {report['machine']['torch_threads']} threads"
    table = Table(title=f"bench infer: {report['model']} on {where} (prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new)")
    for col in ["dtype", "compute", "weights MB", "after load MB", "batch", "peak MB", "TTFT ms", "decode tok/s", "weights GB/s", "% of BW limit"]:
        table.add_column(col, justify="right")
    for r in report["results"]:
        for k, b in enumerate(r["batches"]):
            lead = [r["dtype"], r["compute_dtype"], f"{r['weight_mb']:.1f}", f"{r['after_load_mb']:.1f}"] if k == 0 else [""] * 4
            ratio = f"{100 * b['bandwidth_ratio']:.0f}%" if b["bandwidth_ratio"] is not None else "-"
            table.add_row(*lead, str(b["batch"]), f"{b['peak_mb']:.1f}", f"{1000 * b['ttft_s']:.1f}", f"{b['decode_tokens_per_s']:.1f}",
                          f"{b['bandwidth_gbs']:.2f}", ratio)
    return table
