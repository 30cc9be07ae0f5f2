"""`phinetune serve`: an OpenAI-compatible HTTP API over a run, a merged folder, a model, or several LoRA runs
on one base."""

from __future__ import annotations

from typing import Literal

import typer

from phinetune.cli.app import app
from phinetune.cli.options import LOAD, Checkpoint, DType, Quant
from phinetune.serve.settings import REASONING_MODES, Listen, ServeSettings

SETTINGS, LISTEN = ServeSettings(), Listen()  # the defaults


@app.command()
def serve(
    targets: list[str] = typer.Argument(
        ...,
        help="A run folder, a merged folder, or a base model id; or several LoRA runs "
        "on one base (each served under its folder name, plus the base).",
    ),
    host: str = typer.Option(LISTEN.host, help="Bind address; anything but loopback exposes the model to the network."),
    port: int = typer.Option(LISTEN.port),
    api_key: str | None = typer.Option(None, help="Require 'Authorization: Bearer KEY' (or set PHINETUNE_API_KEY)."),
    model_name: str | None = typer.Option(
        None, help="The model id clients pass (default: the folder name or model id)."
    ),
    max_tokens: int = typer.Option(
        SETTINGS.max_tokens, help="Largest max_tokens a request may ask for (and the chat default)."
    ),
    max_body_kb: int = typer.Option(SETTINGS.max_body_bytes // 1024, help="Largest request body in KiB (413 above)."),
    max_queue: int = typer.Option(SETTINGS.max_queue, help="Requests that may wait for the model (429 above)."),
    max_batch: int = typer.Option(
        SETTINGS.max_batch, help="Prompts generated together when compatible requests wait together."
    ),
    dtype: DType = LOAD.dtype,
    quant: Quant = LOAD.quant,
    request_timeout: float = typer.Option(
        SETTINGS.request_timeout, help="Seconds a request may take, queue wait included (504 after)."
    ),
    cors_origin: list[str] = typer.Option(
        [], help="Allow browser pages from this origin (repeat; '*' for any). Default: no CORS."
    ),
    access_log: str = typer.Option(
        LISTEN.access_log, help="One JSON line per request: '-' stderr, 'off', or a file path."
    ),
    log_prompts: bool = typer.Option(False, help="Also write prompt text into the access log."),
    checkpoint: Checkpoint = None,
    reasoning: Literal[REASONING_MODES] = typer.Option(
        SETTINGS.reasoning,
        help="A reply's <think> trace: separate (reasoning_content, as vLLM), hide, or inline (left in content).",
    ),
) -> None:
    """OpenAI-compatible HTTP API: /v1/chat/completions (SSE streaming; tools for Phi-4-mini), /v1/completions, /v1/models, /health, /metrics."""
    from phinetune.models.load_options import LoadOptions
    from phinetune.runs.targets import check_source
    from phinetune.serve.settings import check_port_free

    check_port_free(host, port)  # a busy port is known in milliseconds: before torch is imported and the model loaded
    for target in targets:
        check_source(target, checkpoint=checkpoint)
    from phinetune.serve.run import serve as run_serve

    settings = ServeSettings(
        model_name,
        api_key,
        max_tokens,
        max_body_kb * 1024,
        max_queue,
        max_batch,
        request_timeout,
        list(cors_origin),
        log_prompts,
        reasoning,
    )
    run_serve(targets, settings, Listen(host, port, access_log), LoadOptions(dtype, quant), checkpoint)
