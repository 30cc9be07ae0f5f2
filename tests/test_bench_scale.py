"""`phinetune bench train --nproc 1,2` (bench/scale.py): the same workload on each process count, per-rank figures."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from phinetune.bench.scale import bench_scale, parse_nproc, summarize
from phinetune.errors import ConfigError


def test_process_counts_are_parsed_or_refused_in_one_sentence():
    assert parse_nproc("1,2") == [1, 2] and parse_nproc(" 4 ") == [4]
    for bad in ("", "0,1", "one,two"):
        with pytest.raises(ConfigError, match="comma-separated process counts"):
            parse_nproc(bad)


def test_a_count_that_does_not_split_the_global_batch_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"--nproc 3: the tiny workload's batch of 4 does not split evenly"):
        bench_scale([1, 3], "tiny", work_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # refused before building the model


def test_throughput_is_all_tokens_over_the_slowest_rank():
    ranks = [
        {
            "rank": 0,
            "engine": "MULTI_CPU",
            "sharded": False,
            "seconds": 2.0,
            "tokens": 300,
            "steps": 3,
            "losses": [5.0, 4.0],
            "peak_rss": 10,
        },
        {
            "rank": 1,
            "engine": "MULTI_CPU",
            "sharded": False,
            "seconds": 4.0,
            "tokens": 100,
            "steps": 3,
            "losses": [],
            "peak_rss": 20,
        },
    ]
    row = summarize(2, ranks, "peak_rss")
    assert row["tokens"] == 400 and row["seconds"] == 4.0 and row["tokens_per_s"] == 100.0 and row["memory"] == 20
    assert [(r["tokens_per_s"], r["peak_memory"]) for r in row["ranks"]] == [(150.0, 10), (25.0, 20)]
    assert row["losses"] == [5.0, 4.0]  # the main process's


@pytest.mark.slow
def test_bench_train_nproc_reports_each_count_on_the_same_work(tmp_path):
    out = tmp_path / "scale.json"
    proc = run_cli(
        "bench",
        "train",
        "--workload",
        "tiny",
        "--nproc",
        "1,2",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(out),
    )
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["nproc-1", "nproc-2"]
    one, two = report["results"].values()
    assert (
        (one["nproc"], two["nproc"]) == (1, 2)
        and len(one["ranks"]) == 1
        and [r["rank"] for r in two["ranks"]] == [0, 1]
    )
    assert one["tokens"] == two["tokens"] > 0 and one["steps"] == two["steps"] == len(one["losses"]) == len(
        two["losses"]
    )
    assert all(
        r["tokens"] > 0 and r["peak_memory"] > 100 * 2**20 for r in two["ranks"]
    )  # each rank's own RSS: torch alone is more
    assert sum(r["tokens"] for r in two["ranks"]) == one["ranks"][0]["tokens"]  # the same global batches, split
    for row in (one, two):
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / max(r["seconds"] for r in row["ranks"]))
    load = report["load"]
    assert len(load["start"]) == 3 and len(load["end"]) == 3 and isinstance(load["steady"], bool)
    assert one["dtype"] == two["dtype"] == "fp32"  # the tiny workload on CPU
    from phinetune.bench.gpu_check import (
        train_section,
    )  # the GPU check's report reads this JSON as it reads bench train's

    section = train_section("nproc", report)
    assert (
        set(section["sides"]) == {"nproc-1", "nproc-2"} and section["sides"]["nproc-2"]["memory_bytes"] == two["memory"]
    )
    assert "rank 1" in proc.stdout and "load average at start" in proc.stdout and "speedup" in proc.stdout
