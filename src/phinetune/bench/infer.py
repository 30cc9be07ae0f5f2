"""`phinetune bench infer`: memory and speed of generation per dtype (bf16, fp16, fp32, nf4), measured, not estimated.

Per dtype: bytes of weights (exact, from the tensors), memory after load, peak memory during generation, and at
each batch size the prefill/decode split: time to first token and prefill tokens/s (the whole batch's prompt),
then decode tokens/s. Generation goes through `infer.complete.complete`, the one path `generate`, `chat` and
`serve` use, so the figures are theirs.

Bandwidth share: a decode step reads every weight once (the input embedding only one row per sequence), so
read bytes per step x steps/s is the bandwidth decode uses; the limit it is compared with is measured in the
same run: on CPU a read-only sum over a 512 MiB tensor (best of 5) timed immediately before and after each
decode run, the higher of the two taken (the conservative ratio); on a GPU the datasheet figure for known GPUs,
else a measured device-to-device copy.

Memory: on CUDA, torch's allocator counters (exact). On CPU there are none, so each dtype runs in a forked
child process and memory is its resident set (RSS) above the child's RSS before loading: its peak is the
kernel's high-water mark on Linux (see _RssPeak), sampled every 2 ms elsewhere.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.table import Table
from transformers.generation.streamers import BaseStreamer

from phinetune.bench.machine import LoadWindow, machine, proc_status, reset_peak_rss
from phinetune.errors import PhinetuneError
from phinetune.extras import require
from phinetune.progress import console, escape, print_table

BENCH_DTYPES = {"bf16": ("bf16", "none"), "fp16": ("fp16", "none"), "fp32": ("fp32", "none"), "nf4": ("auto", "nf4")}

# Datasheet memory bandwidth (GB/s) by a substring of torch.cuda.get_device_name(); first match wins,
# so more specific names come first.
GPU_BANDWIDTH_GBS = {
    "H200": 4800,
    "H100 PCIe": 2000,
    "H100": 3350,
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100": 1555,
    "L40S": 864,
    "L4": 300,
    "A10G": 600,
    "A10": 600,
    "T4": 320,
    "V100": 900,
    "RTX 4090": 1008,
    "RTX 3090": 936,
}

CPU_BANDWIDTH_BYTES = 512 * 1024 * 1024  # far past any CPU's last-level cache, small next to its RAM
BANDWIDTH_REPS = 5

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
    bandwidth_gbs: float  # bytes a decode step reads x decode steps/s
    bandwidth_ratio: float | None  # of limit_gbs
    prefill_tokens_per_s: float = 0.0  # batch x prompt tokens / ttft_s
    decode_steps: int = 0  # steps timed for decode_tokens_per_s (new tokens - 1)
    limit_gbs: float | None = None  # the bandwidth limit the ratio is taken against
    bandwidth_before_gbs: float | None = None  # CPU: read bandwidth measured just before this run
    bandwidth_after_gbs: float | None = None  # ... and just after
    decode_kernel: str = ""  # which matmul kernel the decode steps ran on (infer/complete.py decode_kernels)


@dataclass
class DtypeResult:
    dtype: str
    compute_dtype: str
    weight_mb: float
    after_load_mb: float
    batches: list[BatchResult]
    decode_read_mb: float = 0.0  # bytes one batch-1 decode step reads (decode_read_bytes)


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
    """This process's peak RSS over a block: CPU memory has no allocator counters to ask.

    On Linux the kernel keeps the high-water mark itself (VmHWM in /proc/self/status, reset by writing 5 to
    /proc/self/clear_refs): exact, and no sampling thread competes with the generation being timed (on 2 cores
    a thread waking every 2 ms costs decode speed). Elsewhere a thread samples RSS every 2 ms."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self.kernel = self._reset_high_water_mark()
        self._stop = threading.Event()
        self._thread = None if self.kernel else threading.Thread(target=self._run, daemon=True)

    def _reset_high_water_mark(self) -> bool:
        try:
            reset_peak_rss()
            proc_status("VmHWM")
            return True
        except (OSError, RuntimeError):  # not Linux, or a kernel without the field
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _RssPeak:
        self.peak = self.proc.memory_info().rss
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss, proc_status("VmHWM") if self.kernel else 0)

    @property
    def method(self) -> str:
        return "the kernel's peak RSS (VmHWM, reset before each run)" if self.kernel else "RSS sampled every 2 ms"


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


MB = 1024 * 1024


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers as stored (4-bit weights count as their packed uint8 storage)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def decode_read_bytes(model: torch.nn.Module, batch: int = 1) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer once (shared ones once), except the
    input embedding table, of which a step reads one row per sequence, unless the output head shares it
    (tied embeddings: the head reads all of it). The KV cache is not counted: at a few hundred positions it is
    well under 1% of a Phi model's weights, and leaving it out only lowers the ratio."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen or (t is embed and not tied):
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total + (0 if tied else batch * embed.shape[1] * embed.element_size())


def cpu_read_bandwidth(nbytes: int = CPU_BANDWIDTH_BYTES, reps: int = BANDWIDTH_REPS) -> float:
    """Read GB/s of this CPU with torch's threads: best of `reps` sums over a tensor far larger than any cache
    (a sum reads each byte once and does one add per 4 bytes, so memory, not arithmetic, sets its speed)."""
    data = torch.ones(nbytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(reps + 1):  # the first pass warms the pages and the thread pool
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def device_bandwidth() -> dict:
    """The GPU's memory bandwidth: measured with a large device-to-device copy, plus the datasheet value when known."""
    if not torch.cuda.is_available():
        return {
            "device": "cpu",
            "method": f"read-only sum over {CPU_BANDWIDTH_BYTES // MB} MiB, best of {BANDWIDTH_REPS}, "
            "measured just before and after each decode run (the higher is the limit)",
        }
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


def bench_one(target: str, name: str, settings: BenchSettings, limit_gbs: float | None) -> DtypeResult:
    """Load `target` in one dtype, then time and measure generation at each batch size (`limit_gbs`: the GPU's
    bandwidth; None on CPU, where it is measured around each run)."""
    from phinetune.infer.complete import uses_native_gemv
    from phinetune.runs.loading import load_for_inference

    cuda = torch.cuda.is_available()
    dtype, quant = BENCH_DTYPES[name]
    base = torch.cuda.memory_allocated() if cuda else _rss()
    loaded = load_for_inference(target, dtype, quant)
    after = (torch.cuda.memory_allocated() if cuda else _rss()) - base
    # No stop tokens: every run decodes exactly --new-tokens steps (checked in _measure).
    loaded = replace(loaded, stop_ids=[])
    ids = _prompt_ids(loaded.tokenizer, settings.prompt_tokens)
    batches = []
    for b in settings.batch_sizes:
        _generate(loaded, [ids] * b, 2, lambda: None)  # warm-up at this shape: kernels, oneDNN primitives, lazy init
        before = None if cuda else cpu_read_bandwidth()
        stamps, peak = _measure(loaded, [ids] * b, settings.new_tokens, cuda, base)
        after_bw = None if cuda else cpu_read_bandwidth()
        limit = limit_gbs or max(before, after_bw)
        # times: [call, prompt handed to the streamer, token 1, ..., token N]
        first, last = stamps.times[2], stamps.times[-1]
        steps = len(stamps.times) - 3
        steps_per_s = steps / (last - first)
        bandwidth = decode_read_bytes(loaded.model, b) * steps_per_s / 1e9
        ttft = first - stamps.times[0]
        kernel = (
            "torch native GEMV (oneDNN off)"
            if uses_native_gemv(loaded.model, b)
            else "torch's default for the dtype and device"
        )
        batches.append(
            BatchResult(
                b,
                ttft,
                b * steps_per_s,
                peak / MB,
                bandwidth,
                bandwidth / limit,
                b * len(ids) / ttft,
                steps,
                limit,
                before,
                after_bw,
                kernel,
            )
        )
    model = loaded.model
    compute = str(next(p for p in model.parameters() if p.is_floating_point()).dtype).replace("torch.", "")
    return DtypeResult(name, compute, weight_bytes(model) / MB, after / MB, batches, decode_read_bytes(model) / MB)


def _measure(loaded, prompts: list[list[int]], new_tokens: int, cuda: bool, base: int):
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        stamps = _generate(loaded, prompts, new_tokens, torch.cuda.synchronize)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with _RssPeak() as rss:
            stamps = _generate(loaded, prompts, new_tokens, lambda: None)
        peak = rss.peak - base
    if len(stamps.times) - 2 != new_tokens:
        raise PhinetuneError(
            f"generation stopped after {len(stamps.times) - 2} of {new_tokens} new tokens; "
            "the model's generation config ends it early (bench infer needs every step)"
        )
    return stamps, peak


def _generate(loaded, prompts: list[list[int]], new_tokens: int, sync) -> _Timestamps:
    """Generate through the one generation path (infer/complete.py), greedy, timing each step's tokens."""
    from phinetune.infer.complete import Sampling, complete

    stamps = _Timestamps(sync)
    stamps.times.append(time.perf_counter())
    complete(loaded, prompts, Sampling(max_new_tokens=new_tokens), streamer=stamps)
    return stamps


def _prompt_ids(tokenizer, n: int) -> list[int]:
    ids = tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    return (ids * (n // len(ids) + 1))[:n]


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


def bench_infer(
    target: str,
    dtypes: list[str],
    settings: BenchSettings,
    out: Path,
    label: str | None = None,
    extra: dict | None = None,
) -> dict:
    """Measure each dtype (on CPU in a forked child), write the JSON to `out` and print the tables; `label`
    names the model in the report instead of `target`, `extra` adds fields to it."""
    unknown = [d for d in dtypes if d not in BENCH_DTYPES]
    if unknown or not dtypes:
        raise PhinetuneError(
            f"--dtype: unknown {unknown or 'empty list'}; choose from {', '.join(BENCH_DTYPES)} (comma-separated)"
        )
    cuda = torch.cuda.is_available()
    if not cuda:
        require("bench infer on CPU (it measures memory with psutil)", "bench", "psutil")
    bandwidth = device_bandwidth()
    limit = bandwidth.get("datasheet_gbs") or bandwidth.get("measured_copy_gbs")
    if not cuda and "nf4" in dtypes:
        import bitsandbytes  # noqa: F401  imported here, so the children's memory does not count the library
    from phinetune.infer.complete import complete  # noqa: F401
    from phinetune.runs.loading import load_for_inference  # noqa: F401  same: libraries load before the baseline

    load = LoadWindow()
    results, skipped = [], {}
    for name in dtypes:
        with console.status(f"bench infer: {name}"):
            run = (
                (lambda: bench_one(target, name, settings, limit))
                if cuda
                else (lambda: _in_child(bench_one, target, name, settings, limit))
            )
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
    report = {
        "model": label or target,
        **(extra or {}),
        "settings": asdict(settings),
        "machine": machine(),
        "load": load.close().to_json(),
        "bandwidth": bandwidth,
        "skipped": skipped,
        "memory_method": "torch.cuda allocator (exact)"
        if cuda
        else f"process RSS above the pre-load baseline ({_RssPeak().method})",
        "results": [asdict(r) for r in results],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(render_table(report))
    print_table(render_speed_table(report))
    console.print(
        f"bandwidth limit: {bandwidth.get('method') or _gpu_limit_text(bandwidth)}; {load.describe()}"
        + ("" if load.steady else " (load changed: the ratios are not comparable)")
    )
    console.print(f"JSON written to {out}")
    return report


def bench_workload(
    name: str, dtypes: list[str], settings: BenchSettings, out: Path, realdata: str | None = None
) -> dict:
    """bench infer on a named random-weight workload (bench/workloads.py), built in a temporary folder."""
    from phinetune.bench.workloads import WORKLOADS, materialize

    if name not in WORKLOADS:
        raise PhinetuneError(f"--workload: unknown {name!r}; choose from {', '.join(WORKLOADS)}")
    with tempfile.TemporaryDirectory(prefix="phinetune-bench-infer-") as work:
        with console.status(f"building the {name} workload's random-weight model"):
            built = materialize(WORKLOADS[name], Path(work), realdata, rows=1)
        return bench_infer(
            built.model_dir,
            dtypes,
            settings,
            out,
            label=f"workload {name}",
            extra={"workload": asdict(WORKLOADS[name]), "workload_note": built.note},
        )


def _gpu_limit_text(bandwidth: dict) -> str:
    if bandwidth.get("datasheet_gbs"):
        return f"{bandwidth['device']} datasheet {bandwidth['datasheet_gbs']} GB/s (measured copy {bandwidth['measured_copy_gbs']} GB/s)"
    return f"{bandwidth['device']} measured copy {bandwidth['measured_copy_gbs']} GB/s"


def _where(report: dict) -> str:
    return report["machine"].get("gpu") or f"CPU, {report['machine']['torch_threads']} threads"


def render_table(report: dict) -> Table:
    """Memory per dtype and batch size."""
    s = report["settings"]
    table = Table(
        title=f"bench infer: {report['model']} on {_where(report)} (prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new)"
    )
    for col in ["dtype", "compute", "weights MB", "read/step MB", "after load MB", "batch", "peak MB"]:
        table.add_column(col, justify="right")
    for r in report["results"]:
        for k, b in enumerate(r["batches"]):
            lead = (
                [
                    r["dtype"],
                    r["compute_dtype"],
                    f"{r['weight_mb']:.1f}",
                    f"{r['decode_read_mb']:.1f}",
                    f"{r['after_load_mb']:.1f}",
                ]
                if k == 0
                else [""] * 5
            )
            table.add_row(*lead, str(b["batch"]), f"{b['peak_mb']:.1f}")
    return table


def render_speed_table(report: dict) -> Table:
    """The prefill/decode split and the decode bandwidth against the limit, per dtype and batch size."""
    table = Table(title="prefill (TTFT) and decode; bandwidth = bytes read per decode step x steps/s")
    for col in ["dtype", "batch", "TTFT ms", "prefill tok/s", "decode tok/s", "read GB/s", "limit GB/s", "% of limit"]:
        table.add_column(col, justify="right")
    for r in report["results"]:
        for k, b in enumerate(r["batches"]):
            ratio = f"{100 * b['bandwidth_ratio']:.0f}%" if b["bandwidth_ratio"] is not None else "-"
            limit = f"{b['limit_gbs']:.1f}" if b.get("limit_gbs") else "-"
            table.add_row(
                r["dtype"] if k == 0 else "",
                str(b["batch"]),
                f"{1000 * b['ttft_s']:.1f}",
                f"{b['prefill_tokens_per_s']:.1f}",
                f"{b['decode_tokens_per_s']:.1f}",
                f"{b['bandwidth_gbs']:.2f}",
                limit,
                ratio,
            )
    return table
