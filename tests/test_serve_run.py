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


def test_the_cli_checks_the_port_before_the_model_and_before_torch():
    """`phinetune serve` with a busy port: the port sentence comes before the missing model's (checked first), in a
    fresh process that never imported torch (the seconds a model load would cost come after the check)."""
    import subprocess
    import sys

    from conftest import SRC

    probe = (
        "import sys; from phinetune import cli; sys.argv = ['phinetune', 'serve', '/nonexistent/model', '--port', sys.argv[1]]\n"
        "try:\n    cli.main()\nfinally:\n    print('torch imported' if 'torch' in sys.modules else 'torch not imported')"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-c", probe, str(port)],
            env={"PYTHONPATH": str(SRC), "PHINETUNE_QUIET": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "PATH": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in out and "torch not imported" in out, (
        out + proc.stderr
    )
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_port_out_of_range_is_one_sentence():
    with pytest.raises(PhinetuneError, match=r"--port must be between 0 and 65535 \(got 70000\)"):
        check_port_free("127.0.0.1", 70000)
