"""Load a model and run the API with uvicorn (127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace

from phinetune.errors import PhinetuneError
from phinetune.extras import require
from phinetune.models.load_options import LoadOptions
from phinetune.progress import console, escape
from phinetune.serve.settings import REASONING_MODES, Listen, ServeSettings, check_port_free


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    target: str | list[str],
    settings: ServeSettings = ServeSettings(),
    listen: Listen = Listen(),
    load: LoadOptions = LoadOptions(),
    checkpoint: str | None = None,
) -> None:
    """`target`: one run folder, merged folder or model id, or several LoRA run folders on one base (one model id each).
    `settings.model_name` renames the first; `checkpoint` serves a training checkpoint of one run folder."""
    require(
        "phinetune serve", "serve", "fastapi", "uvicorn", "prometheus_client"
    )  # core dependencies; a trimmed install may lack them
    import uvicorn

    from phinetune.serve.adapters import load_served
    from phinetune.serve.app import create_app
    from phinetune.serve.observe import configure_access_log

    limits = {
        "--max-tokens": (settings.max_tokens, 1, 1 << 20),
        "--max-body-kb": (settings.max_body_bytes // 1024, 1, 1 << 20),
        "--max-queue": (settings.max_queue, 1, 1 << 16),
        "--max-batch": (settings.max_batch, 1, 1024),
    }
    for flag, (value, low, high) in limits.items():
        if not low <= value <= high:
            raise PhinetuneError(f"{flag} must be between {low} and {high} (got {value})")
    if not settings.request_timeout > 0:
        raise PhinetuneError(f"--request-timeout must be a positive number of seconds (got {settings.request_timeout})")
    if settings.reasoning not in REASONING_MODES:
        raise PhinetuneError(f"--reasoning must be one of {', '.join(REASONING_MODES)} (got {settings.reasoning})")
    api_key = settings.api_key or os.environ.get("PHINETUNE_API_KEY") or None
    host, port = listen.host, listen.port
    if not is_loopback(host) and not api_key:
        console.print(
            f"[bold yellow]warning:[/bold yellow] serving on {escape(host)} without an API key: anyone who can reach this "
            "address can use the model (set --api-key or PHINETUNE_API_KEY)",
            markup=True,
        )
    check_port_free(host, port)  # before the slow model load, not as uvicorn's Errno 98 after it
    targets = [target] if isinstance(target, str) else list(target)
    served = load_served(targets, load.dtype, load.quant, settings.model_name, checkpoint)
    for line in served.memory:
        console.print(f"memory: {line}")
    settings = replace(settings, model_name=served.default, api_key=api_key)
    app = create_app(served, settings)
    configure_access_log(listen.access_log)
    console.print(
        f"serving {', '.join(repr(m) for m in served.models)} at http://{host}:{port}/v1 (OpenAI-compatible; "
        f"/health, /metrics, /docs){'; API key required' if api_key else ''}"
    )
    app.router.add_event_handler(
        "shutdown", lambda: console.print(f"stopped after answering {app.state.worker.served} requests")
    )
    # On SIGTERM/SIGINT uvicorn stops accepting, lets in-flight requests finish (up to the request timeout), then
    # runs the app's shutdown, where the worker drains what is still queued.
    uvicorn.run(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(settings.request_timeout) + 1
    )
