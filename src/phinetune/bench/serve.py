"""`phinetune bench serve`: throughput and latency of the HTTP server at several concurrency levels.

Against a running server (--url) or one this command starts itself on a free loopback port (a TARGET, served
as `phinetune serve` would). At each level, `requests` chat completions (non-streaming, greedy, max_tokens
fixed) are sent by that many concurrent clients; the table gives requests/s, generated tokens/s and the
p50/p95 latency of one request. The numbers are this machine's, under whatever else it is running.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from rich.table import Table

from phinetune.errors import PhinetuneError
from phinetune.progress import console


@dataclass
class Level:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    p50_s: float
    p95_s: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(target: str, max_batch: int, dtype: str) -> Iterator[str]:
    """`phinetune serve TARGET` in this process, on loopback, for as long as the block runs."""
    import uvicorn

    from phinetune.serve.adapters import load_served
    from phinetune.serve.app import ServeSettings, create_app

    served = load_served([target], dtype)
    app = create_app(served, ServeSettings(served.default, max_tokens=4096, max_queue=4096, max_batch=max_batch))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise PhinetuneError(f"could not start a server for {target} on 127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def run_level(
    url: str, model: str | None, concurrency: int, requests: int, max_tokens: int, api_key: str | None
) -> Level:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def one(i: int) -> tuple[float, int, bool]:
        body = {
            "messages": [{"role": "user", "content": f"Tell me a riddle about the number {i}."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        } | ({"model": model} if model else {})
        start = time.perf_counter()
        try:
            r = http.post("/v1/chat/completions", json=body)
            ok = r.status_code == 200
            tokens = r.json()["usage"]["completion_tokens"] if ok else 0
        except httpx.HTTPError:
            ok, tokens = False, 0
        return time.perf_counter() - start, tokens, ok

    with httpx.Client(base_url=url, headers=headers, limits=limits, timeout=600) as http:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - start
    latencies = [t for t, _, ok in results if ok] or [float("nan")]
    tokens = sum(n for _, n, _ in results)
    return Level(
        concurrency,
        requests,
        sum(not ok for _, _, ok in results),
        round(seconds, 3),
        round(requests / seconds, 3),
        round(tokens / seconds, 2),
        round(statistics.median(latencies), 4),
        round(percentile(latencies, 95), 4),
    )


def bench_serve(
    target: str | None,
    url: str | None,
    levels: tuple[int, ...],
    requests: int,
    max_tokens: int,
    model: str | None = None,
    api_key: str | None = None,
    max_batch: int = 8,
    dtype: str = "auto",
    out: Path | None = None,
) -> list[Level]:
    if (target is None) == (url is None):
        raise PhinetuneError("bench serve needs a TARGET to serve itself or --url of a running server (one of them)")
    if not levels or min(levels) < 1 or requests < 1 or max_tokens < 1:
        raise PhinetuneError(
            f"--concurrency levels, --requests and --max-tokens must be >= 1 (got {levels}, {requests}, {max_tokens})"
        )
    if url is not None:
        return _report(url, [run_level(url, model, c, max(requests, c), max_tokens, api_key) for c in levels], out)
    with local_server(target, max_batch, dtype) as local:
        run_level(local, model, 1, 2, max_tokens, None)  # warm-up: first calls pay one-off costs
        return _report(target, [run_level(local, model, c, max(requests, c), max_tokens, None) for c in levels], out)


def _report(what: str, rows: list[Level], out: Path | None) -> list[Level]:
    table = Table(title=f"bench serve: {what}")
    for col in ("concurrency", "requests", "errors", "req/s", "gen tok/s", "p50 latency s", "p95 latency s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r.concurrency),
            str(r.requests),
            str(r.errors),
            f"{r.requests_per_s:.2f}",
            f"{r.tokens_per_s:.1f}",
            f"{r.p50_s:.3f}",
            f"{r.p95_s:.3f}",
        )
    console.print(table)
    if out is not None:
        out.write_text(json.dumps({"target": what, "levels": [asdict(r) for r in rows]}, indent=1))
        console.print(f"saved {out}")
    return rows
