"""What an operator watches: Prometheus metrics (/metrics) and one JSON access-log line per request.

Both come from one ASGI middleware around the whole app, so every answer counts, including the ones the
inner layers give without reaching an endpoint (413 from the body limit, 400 for bad JSON, CORS preflights).
Endpoints add what only they know (model, token counts, and the prompt when --log-prompts asks for it) to
`request.state.access`. Each app has its own registry, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

access_log = logging.getLogger("phinetune.serve.access")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, queued: Callable[[], int], busy: Callable[[], bool]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "phinetune_requests", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.tokens = Counter(
            "phinetune_tokens",
            "Tokens read (prompt) and generated (completion), by model.",
            ["model", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "phinetune_request_latency_seconds",
            "Time from request to the last byte of the answer.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "phinetune_time_to_first_token_seconds",
            "Streaming: time from request to the first text.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "phinetune_batch_prompts", "Prompts per generate call.", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        Gauge("phinetune_queue_depth", "Requests waiting for the model.", registry=r).set_function(queued)
        Gauge("phinetune_worker_busy", "1 while a batch is on the model.", registry=r).set_function(
            lambda: float(busy())
        )

    def count_tokens(self, model: str, usage: dict) -> None:
        self.tokens.labels(model, "prompt").inc(usage["prompt_tokens"])
        self.tokens.labels(model, "completion").inc(usage["completion_tokens"])

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class AccessLog:
    """ASGI middleware: time each HTTP request, count it, and log it as one JSON line when its answer is done."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [None]
        request_id = uuid.uuid4().hex
        entry = {"request_id": request_id}
        scope.setdefault("state", {})["access"] = entry

        async def tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            self._record(scope, status[0] or 500, time.perf_counter() - start, entry)

    def _record(self, scope, status: int, seconds: float, entry: dict) -> None:
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("", 0)
            line = {
                "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
                "client": client[0],
                **entry,
            }
            access_log.info(json.dumps(line, ensure_ascii=False))


def configure_access_log(target: str) -> None:
    """'-': stderr, 'off': nothing, else a file path (appended). Lines are the JSON alone."""
    access_log.handlers.clear()
    access_log.propagate = False
    if target == "off":
        access_log.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler() if target == "-" else logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
