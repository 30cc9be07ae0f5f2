"""bench/infer.py and `phinetune bench infer`: the table is printed and the JSON holds measured, sane numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from phinetune.bench.infer import BenchSettings, bench_infer, cpu_read_bandwidth, decode_read_bytes, weight_bytes
from phinetune.errors import PhinetuneError


def _check_split_and_ratio(b: dict, r: dict, prompt_tokens: int, new_tokens: int) -> None:
    """The prefill/decode split and the bandwidth share follow from the measured times and bytes, on CPU too."""
    assert b["prefill_tokens_per_s"] == pytest.approx(b["batch"] * prompt_tokens / b["ttft_s"])
    assert b["decode_steps"] == new_tokens - 1  # every step decoded: no early stop
    native = b["batch"] == 1 and r["dtype"] in ("bf16", "fp16")  # CPU: the batch-1 16-bit decode switch
    assert b["decode_kernel"].startswith("torch native GEMV") == native
    assert b["bandwidth_before_gbs"] > 0 and b["bandwidth_after_gbs"] > 0
    assert b["limit_gbs"] == max(b["bandwidth_before_gbs"], b["bandwidth_after_gbs"])  # the conservative limit
    assert b["bandwidth_ratio"] == pytest.approx(b["bandwidth_gbs"] / b["limit_gbs"])
    # bytes read per step: the batch-1 figure plus one more embedding row per extra sequence (untied tiny models)
    steps_per_s = b["decode_tokens_per_s"] / b["batch"]
    assert b["bandwidth_gbs"] * 1e9 / steps_per_s >= r["decode_read_mb"] * 1024 * 1024 * 0.999


@pytest.mark.slow
def test_bench_infer_cpu_bf16_fp32_nf4(tiny_run, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "infer",
        str(tiny_run),
        "--dtype",
        "bf16,fp32,nf4",
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "6",
        "--batch-sizes",
        "1,3",
        "--out",
        str(out),
    )
    assert "bench infer" in proc.stdout and "decode tok/s" in proc.stdout
    for name in ["bf16", "fp32", "nf4"]:
        assert f" {name} " in proc.stdout
    report = json.loads(out.read_text())
    rows = {r["dtype"]: r for r in report["results"]}
    assert list(rows) == ["bf16", "fp32", "nf4"]
    for r in rows.values():
        assert r["weight_mb"] > 0 and r["after_load_mb"] > 0 and [b["batch"] for b in r["batches"]] == [1, 3]
        for b in r["batches"]:
            assert b["ttft_s"] > 0 and b["decode_tokens_per_s"] > 0 and b["peak_mb"] > 0 and b["bandwidth_gbs"] > 0
            _check_split_and_ratio(b, r, prompt_tokens=16, new_tokens=6)
    # the base weights shrink with the dtype (PEFT keeps the adapter's own weights in fp32, so not exactly 2x)
    assert rows["bf16"]["weight_mb"] < rows["fp32"]["weight_mb"] < 2.05 * rows["bf16"]["weight_mb"]
    assert rows["nf4"]["weight_mb"] < rows["fp32"]["weight_mb"]
    assert rows["fp32"]["compute_dtype"] == "float32" and rows["bf16"]["compute_dtype"] == "bfloat16"


def test_weight_bytes_counts_storage(tiny_phi3):
    model, _ = tiny_phi3
    n = sum(p.numel() for p in model.parameters())
    assert weight_bytes(model) >= 4 * n and weight_bytes(model.to(dtype=__import__("torch").bfloat16)) < 4 * n


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(PhinetuneError, match="unknown"):
        bench_infer("tiny-phi3", ["int3"], BenchSettings(), tmp_path / "x.json")
    with pytest.raises(PhinetuneError, match="new-tokens"):
        BenchSettings(new_tokens=1)


def test_a_refused_dtype_is_skipped_and_reported(monkeypatch, tmp_path):
    import phinetune.bench.infer as bench

    def fake_child(fn, target, name, settings, limit):
        if name == "fp16":
            raise PhinetuneError("model.dtype=fp16 is refused for phi2: NaN")
        return bench.DtypeResult(name, "float32", 1.0, 2.0, [bench.BatchResult(1, 0.1, 10.0, 3.0, 0.5, None)])

    monkeypatch.setattr(bench, "_in_child", fake_child)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    report = bench.bench_infer("tiny-phi2", ["fp16", "fp32"], BenchSettings(), tmp_path / "b.json")
    assert [r["dtype"] for r in report["results"]] == ["fp32"] and "refused" in report["skipped"]["fp16"]
    assert json.loads((tmp_path / "b.json").read_text())["skipped"] == report["skipped"]


def test_table_keeps_every_figure_in_80_columns():
    """Piped output is 80 columns wide; the table must not squeeze its own numbers into `1…`."""
    from phinetune.bench.infer import render_speed_table, render_table
    from phinetune.progress import console, print_table

    batch = {
        "batch": 8,
        "peak_mb": 123456.7,
        "ttft_s": 1.23456,
        "decode_tokens_per_s": 98765.4,
        "bandwidth_gbs": 1234.56,
        "bandwidth_ratio": 0.875,
        "prefill_tokens_per_s": 54321.0,
        "limit_gbs": 1411.0,
    }
    report = {
        "model": "runs/some-long-run-name",
        "settings": {"prompt_tokens": 128, "new_tokens": 64},
        "machine": {"torch_threads": 2},
        "results": [
            {
                "dtype": "bf16",
                "compute_dtype": "bfloat16",
                "weight_mb": 7654.3,
                "after_load_mb": 8765.4,
                "decode_read_mb": 6543.2,
                "batches": [batch],
            }
        ],
    }
    with console.capture() as captured:
        print_table(render_table(report))
        print_table(render_speed_table(report))
    text = captured.get()
    for figure in [
        "7654.3",
        "8765.4",
        "123456.7",
        "1234.6",
        "6543.2",
        "98765.4",
        "54321.0",
        "1234.56",
        "1411.0",
        "88%",
        "decode tok/s",
        "prefill tok/s",
        "% of limit",
        "read/step MB",
    ]:
        assert figure in text, figure
    assert "…" not in text


@pytest.mark.slow
def test_cli_workload_reports_bandwidth_ratio_and_split(tiny_run, tmp_path):
    out = tmp_path / "w.json"
    proc = run_cli(
        "bench",
        "infer",
        "--workload",
        "tiny",
        "--dtype",
        "bf16",
        "--prompt-tokens",
        "12",
        "--new-tokens",
        "5",
        "--batch-sizes",
        "1,2",
        "--out",
        str(out),
    )
    report = json.loads(out.read_text())
    assert report["model"] == "workload tiny" and report["workload"]["hidden_size"] == 64
    assert report["load"]["end"] is not None and "load average at start" in proc.stdout
    assert "prefill tok/s" in proc.stdout and "% of limit" in proc.stdout and "read-only sum" in proc.stdout
    [r] = report["results"]
    for b in r["batches"]:
        _check_split_and_ratio(b, r, prompt_tokens=12, new_tokens=5)


def test_cli_needs_a_target_or_a_workload(tmp_path):
    for args in [(), ("tiny-phi3", "--workload", "tiny")]:
        proc = run_cli("bench", "infer", *args, "--out", str(tmp_path / "x.json"), check=False)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "either a TARGET" in said and "Traceback" not in said
    proc = run_cli("bench", "infer", "--workload", "nope", "--out", str(tmp_path / "x.json"), check=False)
    said = " ".join(proc.stderr.split())  # the command line's own error: a choice it lists
    assert (
        proc.returncode == 2
        and "Invalid value for '--workload'" in said
        and "'nope' is not one of 'cpu-reference'," in said
    )


def test_cpu_decode_workload_is_phi3_mini_width():
    from phinetune.bench.workloads import WORKLOADS

    w = WORKLOADS["cpu-decode"]
    assert (w.hidden_size, w.intermediate_size, w.num_heads, w.vocab_size) == (
        3072,
        8192,
        32,
        32064,
    ) and 2 <= w.num_layers <= 4


def test_decode_read_bytes_counts_what_a_step_reads():
    """By hand: every tensor once, the input embedding as one row per sequence unless the head shares it."""
    import torch

    from phinetune.models.tiny import build_tiny

    for name in ["tiny-phi3", "tiny-phi4"]:
        model, _ = build_tiny(name)
        model = model.to(torch.bfloat16)
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        tied = embed is head
        everything = sum(t.numel() * 2 for t in model.parameters())  # parameters() yields a shared tensor once
        buffers = sum(t.numel() * t.element_size() for t in model.buffers())
        row = embed.shape[1] * 2
        expect = everything + buffers if tied else everything + buffers - embed.numel() * 2 + 3 * row
        assert decode_read_bytes(model, batch=3) == expect, name
        assert tied == (name == "tiny-phi4")  # one of each kind (Phi-4-mini ties its embeddings)


def test_cpu_read_bandwidth_is_measured():
    first = cpu_read_bandwidth(64 * 1024 * 1024, reps=2)
    assert 0.1 < first < 10_000  # GB/s: some real figure, not a constant or a unit slip


def test_peak_rss_catches_a_freed_allocation():
    """A 64 MiB tensor made and freed inside the block shows in the peak (the kernel's high-water mark on Linux)."""
    import torch

    from phinetune.bench.infer import _RssPeak

    with _RssPeak() as rss:
        start = rss.peak
        x = torch.ones(64 * 1024 * 1024 // 4)
        del x
    assert rss.peak - start >= 60 * 1024 * 1024
    assert rss.kernel == Path("/proc/self/clear_refs").exists()  # Linux: the kernel's figure, no sampling thread
