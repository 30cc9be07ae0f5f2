"""Teachers against a real HTTP server on 127.0.0.1 (tests/openai_server.py), not a mocked client."""

import re
import socket
import threading
import time

import pytest

from openai_server import FakeOpenAI
from phinetune.teachers.calls import Call, TeacherError
from phinetune.teachers.config import RequestSampling, TeacherConfig
from phinetune.teachers.endpoint import OpenAITeacher


def calls(n: int) -> list[Call]:
    return [
        Call(
            f"answer/q{i}/0/h", [{"role": "user", "content": f"Riddle number {i}?"}], RequestSampling(max_tokens=20), i
        )
        for i in range(n)
    ]


def teacher(srv: FakeOpenAI, **kw) -> OpenAITeacher:
    return OpenAITeacher(TeacherConfig(model="test-model", base_url=srv.base_url, **kw))


def run(t: OpenAITeacher, cs: list[Call]) -> dict:
    got = {}
    t.run(cs, lambda call, entry: got.setdefault(call.key, entry))
    return got


def test_answers_usage_and_cost():
    with FakeOpenAI() as srv:
        t = teacher(srv, price_input_per_1m=2.0, price_output_per_1m=10.0)
        got = run(t, calls(5))
    assert len(got) == 5 and all(e.text.startswith("The answer is") for e in got.values())
    e = got["answer/q0/0/h"]
    assert e.prompt_tokens == 3 and e.completion_tokens == len(e.text.split())
    assert e.cost == pytest.approx((3 * 2.0 + e.completion_tokens * 10.0) / 1e6)
    assert e.extra["response_id"] in srv.log.answered()


def test_retries_429_and_5xx_then_succeeds():
    with FakeOpenAI(failures=[429, 500, 503, 429]) as srv:
        t = teacher(srv, concurrency=1)
        got = run(t, calls(3))
    assert len(got) == 3
    assert t.counters.retries == 4 and t.counters.errors == {"429": 2, "500": 1, "503": 1}
    assert [c["status"] for c in srv.log.calls].count(200) == 3


def test_retry_after_is_honoured():
    with FakeOpenAI(failures=[429], retry_after="1.0") as srv:
        start = time.perf_counter()
        got = run(teacher(srv, concurrency=1), calls(1))
        waited = time.perf_counter() - start
    assert len(got) == 1 and [c["status"] for c in srv.log.calls] == [429, 200]
    assert 1.0 <= waited < 3.0  # the server's 1 s, not the client's own 0.5 s first backoff


def test_gives_up_after_max_retries_with_a_clear_error():
    with FakeOpenAI(failures=[500] * 10) as srv:
        with pytest.raises(TeacherError, match=r"still failing \(500\) after 2 retries.*re-run to resume"):
            run(teacher(srv, concurrency=1, max_retries=2), calls(1))
        assert len(srv.log.calls) == 3  # first try + 2 retries


def test_timeouts_are_retried():
    with FakeOpenAI(delay_s=0.5) as srv:
        with pytest.raises(TeacherError, match="timeout"):
            run(teacher(srv, timeout_s=0.05, max_retries=1, concurrency=1), calls(1))


def test_auth_failure_names_the_key_variable(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "wrong")
    with FakeOpenAI(api_key="right") as srv:
        with pytest.raises(TeacherError, match=r"rejected the API key \(HTTP 401\); check \$MY_TEACHER_KEY"):
            run(teacher(srv, api_key_env="MY_TEACHER_KEY"), calls(2))
        assert all(c["status"] == 401 for c in srv.log.calls)  # no retries on auth errors
        monkeypatch.setenv("MY_TEACHER_KEY", "right")
        assert len(run(teacher(srv, api_key_env="MY_TEACHER_KEY"), calls(2))) == 2


def test_concurrency_is_bounded():
    with FakeOpenAI(delay_s=0.05) as srv:
        run(teacher(srv, concurrency=3), calls(12))
    assert srv.max_in_flight == 3


def test_missing_key_for_the_openai_api_is_refused_before_any_call(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PHINETUNE_TEACHER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TeacherError, match=r"no key was found; set \$OPENAI_API_KEY"):
        OpenAITeacher(TeacherConfig(model="gpt-4o-mini"))


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to pick it, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_fails_at_once_with_the_url():
    """Nothing listens at the port: not transient, so no retries (the SDK's 6 would take 27-44 s)."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    t = OpenAITeacher(TeacherConfig(model="m", base_url=url))  # the default max_retries=6
    expected = re.escape(
        f"teacher {url}: connection refused, nothing listens there; start the server or point teacher.base_url at one"
    )
    with pytest.raises(TeacherError, match=expected):
        run(t, calls(3))
    with pytest.raises(TeacherError, match=expected):
        t.check_listening()
    assert t.counters.retries == 0  # "at once" is no retries: a wall-time bound would not hold on a loaded machine


def test_a_dropped_connection_is_still_retried():
    """A server that accepts and hangs up at once (a restart, a proxy): transient, retried max_retries times."""
    attempts = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def hang_up():
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                attempts.append(1)
                conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        t = OpenAITeacher(
            TeacherConfig(model="m", base_url=f"http://127.0.0.1:{server.getsockname()[1]}/v1", max_retries=2)
        )
        t.check_listening()  # something listens: no refusal (its probe is the first connection accepted)
        with pytest.raises(TeacherError, match=r"connection error .* after 2 retries"):
            run(t, calls(1))
    assert len(attempts) == 1 + 3 and t.counters.retries == 2  # the probe, then the first try and 2 retries


def test_a_client_that_hangs_up_mid_request_leaves_no_traceback(capfd):
    """The test server answers a client that is gone (a run killed mid-request) without printing a traceback."""
    import json
    import socket
    import struct

    with FakeOpenAI(delay_s=0.3) as srv:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "What has keys?"}]}).encode()
        client = socket.create_connection(srv.server_address)
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset, at once
        client.close()
        time.sleep(1.0)  # the answer is written (and fails) 0.3 s after the request came in
        assert srv.log.answered() == [] and [c["status"] for c in srv.log.calls] == ["hung up"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
