"""What `phinetune serve` is told: how to answer (ServeSettings) and where to listen (Listen).

Plain dataclasses with no FastAPI import, so the CLI builds them before serve/run.py checks that the
serving dependencies are installed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from phinetune.errors import PhinetuneError

REASONING_MODES = (
    "separate",
    "hide",
    "inline",
)  # a reply's <think> trace: reasoning_content field / dropped / left in content


@dataclass
class ServeSettings:
    model_name: str | None = None  # id of a single served model (None: its folder name or id)
    api_key: str | None = None
    max_tokens: int = 512  # cap on max_tokens of one request; also the default for chat
    max_body_bytes: int = 1 << 20
    max_queue: int = 64
    max_batch: int = 8
    request_timeout: float = 300.0  # seconds from arrival to the last byte of the answer (504 after)
    cors_origins: list[str] = field(
        default_factory=list
    )  # none: no CORS headers, browsers on other origins are refused
    log_prompts: bool = False  # put prompt text in the access log
    reasoning: str = "separate"  # a reply's <think> trace: reasoning_content (separate), dropped (hide) or left inline


@dataclass
class Listen:
    host: str = "127.0.0.1"  # loopback: anything else exposes the model to the network
    port: int = 8000
    access_log: str = "-"  # one JSON line per request: '-' stderr, 'off', or a file path


def check_port_free(host: str, port: int) -> None:
    """Bind and release the address uvicorn will bind (port 0 means any free port: nothing to check).

    Here, beside the settings, so the CLI checks it before importing torch and loading the model."""
    if not 0 <= port <= 65535:
        raise PhinetuneError(f"--port must be between 0 and 65535 (got {port})")
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "busy"
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PhinetuneError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (another server there?); "
                "pass another --port or stop the other server"
            ) from None
