"""serve/run.py: a busy port is one sentence before the model loads (not uvicorn's Errno 98 after it)."""

from __future__ import annotations

import socket

import pytest

from phinetune.errors import PhinetuneError
from phinetune.serve.run import check_port_free, serve
from phinetune.serve.settings import Listen


def test_busy_port_is_refused_before_loading_the_model():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PhinetuneError, match=rf"cannot serve on 127.0.0.1:{port}: .*pass another --port"):
            check_port_free("127.0.0.1", port)
        # The target does not exist: reaching the port error proves nothing was loaded first.
        with pytest.raises(PhinetuneError, match="cannot serve on"):
            serve("/nonexistent/model", listen=Listen(port=port))


def test_free_port_passes():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", 0)
