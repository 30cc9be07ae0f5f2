"""bench/serve.py and `phinetune bench serve`: it runs against the server and prints its table (numbers not checked:
the machine is shared)."""

from __future__ import annotations

import json

from conftest import cli_here
from phinetune.bench.serve import percentile


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.0 and percentile([1.0, 2.0], 100) == 2.0


def test_bench_serve_prints_a_row_per_concurrency_level(tiny_run, tmp_path):
    out = tmp_path / "serve.json"
    proc = cli_here(
        "bench",
        "serve",
        str(tiny_run),
        "--concurrency",
        "1,4",
        "--requests",
        "8",
        "--max-tokens",
        "4",
        "--out",
        str(out),
    )
    assert "bench serve" in proc.stdout and "p95 latency s" in proc.stdout
    rows = json.loads(out.read_text())["levels"]
    assert [r["concurrency"] for r in rows] == [1, 4] and all(r["errors"] == 0 and r["requests"] == 8 for r in rows)
    assert all(0 < r["p50_s"] <= r["p95_s"] and r["requests_per_s"] > 0 for r in rows)


def test_bench_serve_needs_exactly_one_of_target_and_url():
    proc = cli_here("bench", "serve", check=False)
    assert proc.returncode == 2 and "TARGET" in (proc.stdout + proc.stderr) and "Traceback" not in proc.stderr
