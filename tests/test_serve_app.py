"""serve/app.py (+ schemas, limits, worker): the OpenAI API through the official `openai` client, on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn

from phinetune.runs.loading import load_for_inference
from phinetune.serve.app import ServeSettings, create_app

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run):
    loaded = load_for_inference(str(tiny_run), "fp32")
    settings = ServeSettings("tiny", api_key=KEY, max_tokens=16, max_body_bytes=8192, max_queue=256, max_batch=8)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(loaded, settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "What has keys but cannot open locks?"}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_chat_streaming_matches_non_streaming(client):
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 1 <= full.usage.completion_tokens <= 8 and full.usage.prompt_tokens > 5
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_sse_ends_with_done(server):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_completions_batch_and_stream(client):
    res = client.completions.create(model="tiny", prompt=["The piano", "A riddle:"], max_tokens=5, temperature=0)
    assert [c.index for c in res.choices] == [0, 1] and res.usage.completion_tokens <= 10
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt="The piano", max_tokens=5,
                                                                             temperature=0, stream=True))
    assert streamed == res.choices[0].text


def test_stop_strings_are_cut_from_the_answer(client):
    free = client.completions.create(model="tiny", prompt="A riddle:", max_tokens=12, temperature=0).choices[0]
    stop = free.text[len(free.text) // 2:len(free.text) // 2 + 3]
    assert len(stop) == 3 and free.finish_reason == "length"
    cut = client.completions.create(model="tiny", prompt="A riddle:", max_tokens=12, temperature=0, stop=[stop]).choices[0]
    assert cut.text == free.text[:free.text.index(stop)] and cut.finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="A riddle:", max_tokens=12, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        bad.models.list()
    assert httpx.post(f"{server}/v1/chat/completions", json={"messages": MESSAGES}).status_code == 401


@pytest.mark.parametrize("kwargs,status,match", [
    (dict(temperature=5), 400, "temperature"),
    (dict(top_p=0), 400, "top_p"),
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(max_tokens=1000), 400, "over this server's limit of 16"),
    (dict(n=2), 400, "'n'"),
    (dict(extra_body={"logprobs_mode": True}), 400, "unknown field 'logprobs_mode'"),
    (dict(model="gpt-4"), 404, "not served here"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), 400, "messages.0.role"),
    (dict(messages=[]), 400, "messages"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
])
def test_bad_requests_get_a_clear_4xx(client, kwargs, status, match):
    args = dict(model="tiny", messages=MESSAGES, max_tokens=4) | kwargs
    with pytest.raises(openai.APIStatusError, match=match) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == status


def test_bad_json_and_oversized_bodies(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad = httpx.post(f"{server}/v1/chat/completions", content=b'{"messages": [', headers=headers)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    not_object = httpx.post(f"{server}/v1/completions", content=b'[1, 2]', headers=headers)
    assert not_object.status_code == 400
    huge = httpx.post(f"{server}/v1/completions", json={"prompt": "x" * 20000}, headers=headers)
    assert huge.status_code == 413 and "limit of 8192 bytes" in huge.json()["error"]["message"]

    def chunks():
        for _ in range(20):
            yield b"x" * 1000

    chunked = httpx.post(f"{server}/v1/completions", content=chunks(), headers=headers)
    assert chunked.status_code == 413
    assert httpx.get(f"{server}/v1/nothing", headers=headers).status_code == 404


MALFORMED = [
    b'{"messages": [',  # broken JSON
    json.dumps({"messages": MESSAGES, "temperature": -1}).encode(),
    json.dumps({"messages": MESSAGES, "max_tokens": 10**6}).encode(),
    json.dumps({"messages": MESSAGES, "bogus": 1}).encode(),
    json.dumps({"prompt": "x" * 10000}).encode(),  # too large
    json.dumps({"messages": "hello"}).encode(),
]


def _one(http: httpx.Client, i: int) -> tuple[bool, int, str]:
    """Request i of the load test: every fourth is malformed, every fifth valid one streams."""
    if i % 4 == 3:
        body = MALFORMED[(i // 4) % len(MALFORMED)]
        r = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        return True, r.status_code, r.text
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Riddle number {i}?"}], "max_tokens": 1 + i % 3,
            "temperature": 0 if i % 2 else 0.7, "stream": i % 5 == 0}
    if i % 5 == 0:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            text = "".join(r.iter_text())
        ok = r.status_code == 200 and text.rstrip().endswith("data: [DONE]")
        return False, r.status_code if ok else 599, text[-200:]
    r = http.post("/v1/chat/completions", json=body)
    ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    return False, r.status_code if ok else 599, r.text[-200:]


def test_load_240_requests_16_way_no_5xx(server):
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, limits=limits, timeout=60) as http:
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: _one(http, i), range(240)))
        elapsed = time.monotonic() - start
    assert not [r for r in results if r[1] >= 500], [r for r in results if r[1] >= 500][:3]
    assert all(400 <= code < 500 for bad, code, _ in results if bad)
    assert all(code == 200 for bad, code, _ in results if not bad)
    assert sum(bad for bad, _, _ in results) == 60 and elapsed < 300


def test_max_tokens_defaults_and_cap():
    from phinetune.serve.app import APIError, _sampling
    from phinetune.serve.schemas import ChatCompletionRequest, CompletionRequest

    settings = ServeSettings("tiny", max_tokens=8)
    chat = ChatCompletionRequest(messages=MESSAGES)
    assert _sampling(chat, settings).max_new_tokens == 8  # chat: up to the cap
    assert _sampling(CompletionRequest(prompt="x"), ServeSettings("tiny", max_tokens=100)).max_new_tokens == 16  # as OpenAI
    assert _sampling(CompletionRequest(prompt="x"), settings).max_new_tokens == 8  # the default never exceeds the cap
    with pytest.raises(APIError, match="over this server's limit of 8"):
        _sampling(ChatCompletionRequest(messages=MESSAGES, max_completion_tokens=9), settings)
