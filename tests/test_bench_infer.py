"""bench/infer.py and `phinetune bench infer`: the table is printed and the JSON holds measured, sane numbers."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from phinetune.errors import PhinetuneError
from phinetune.bench.infer import BenchSettings, bench_infer, weight_bytes


def test_bench_infer_cpu_bf16_fp32_nf4(tiny_run, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "infer", str(tiny_run), "--dtype", "bf16,fp32,nf4", "--prompt-tokens", "16", "--new-tokens", "6",
                   "--batch-sizes", "1,3", "--out", str(out))
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
            assert b["bandwidth_ratio"] is None  # no GPU: no bandwidth limit to compare with
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
    from phinetune.bench.infer import render_table
    from phinetune.progress import console, print_table

    batch = {"batch": 8, "peak_mb": 123456.7, "ttft_s": 1.23456, "decode_tokens_per_s": 98765.4, "bandwidth_gbs": 1234.56,
             "bandwidth_ratio": 0.875}
    report = {"model": "runs/some-long-run-name", "settings": {"prompt_tokens": 128, "new_tokens": 64}, "machine": {"torch_threads": 2},
              "results": [{"dtype": "bf16", "compute_dtype": "bfloat16", "weight_mb": 7654.3, "after_load_mb": 8765.4, "batches": [batch]}]}
    with console.capture() as captured:
        print_table(render_table(report))
    text = captured.get()
    for figure in ["7654.3", "8765.4", "123456.7", "1234.6", "98765.4", "1234.56", "88%", "decode tok/s", "% of BW limit"]:
        assert figure in text, figure
    assert "…" not in text
