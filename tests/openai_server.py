"""A small, real OpenAI-compatible chat-completions server for tests (http.server on 127.0.0.1).

Answers are a pure function of the request body, so two runs that send the same requests get the same
data. It logs every request (a hash of its body and the status returned), can demand an API key, inject
429/5xx failures, and delay answers (to kill a client mid-run).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = (
    "piano",
    "river",
    "candle",
    "shadow",
    "mirror",
    "cloud",
    "clock",
    "needle",
    "echo",
    "sponge",
    "map",
    "coin",
    "kettle",
    "ladder",
    "pillow",
    "window",
    "feather",
    "anchor",
    "bottle",
    "comb",
    "storm",
    "lantern",
    "key",
    "moon",
    "stamp",
    "glove",
    "bridge",
    "whistle",
    "onion",
    "pencil",
    "rainbow",
    "button",
    "compass",
    "tunnel",
    "snail",
    "honey",
)
TEMPLATES = (
    "What has a {0} and a {1} but never a {2}?",
    "I carry the {0} on my back, I drink from the {1}, and I fear the {2}. What am I?",
    "The more {0} you give me, the quieter the {1} gets. Why does the {2} laugh?",
    "Which {0} can travel around a {1} while staying in one {2}?",
    "If a {0} lost its {1}, would the {2} still remember it?",
)


class Log:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls: list[dict] = []  # {"digest", "status", "kind"}

    def add(self, **row) -> dict:
        with self.lock:
            self.calls.append(row)
        return row

    def hung_up(self, row: dict) -> None:
        with self.lock:
            row["status"] = "hung up"

    def answered(self) -> list[str]:
        with self.lock:
            return [c["digest"] for c in self.calls if c["status"] == 200]


def _pick(h: bytes, i: int, options):
    return options[h[i % len(h)] % len(options)]


def judge_reply(prompt: str, policy: str) -> str:
    """A pairwise verdict: 'longer' prefers the longer answer wherever it is shown; 'first' always picks position A."""
    first = prompt.split("[The Start of Assistant A's Answer]\n", 1)[1].split("\n[The End of Assistant A's Answer]", 1)[
        0
    ]
    second = prompt.split("[The Start of Assistant B's Answer]\n", 1)[1].split(
        "\n[The End of Assistant B's Answer]", 1
    )[0]
    if policy == "first":
        return "Assistant A answers first, which I like. [[A]]"
    if len(first) == len(second):
        return "Both answers are equally long. [[C]]"
    return f"The {'first' if len(first) > len(second) else 'second'} answer says more. [[{'A' if len(first) > len(second) else 'B'}]]"


def reply_for(body: dict, judge: str = "longer") -> tuple[str, str]:
    """(kind, text) for a request: riddle lists, follow-up questions, answers or judge verdicts, chosen by the prompt's wording."""
    prompt = body["messages"][-1]["content"]
    h = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    if "[The Start of Assistant A's Answer]" in prompt:
        return "judge", judge_reply(prompt, judge)
    if "new riddles" in prompt:
        first_example = prompt.split("\n\n")[1] if "\n\n" in prompt else ""
        lines = ["Here are 10 new riddles:", ""]
        for j in range(8):
            words = [_pick(h, 3 * j + k, WORDS) for k in range(3)]
            riddle = _pick(h, 30 + j, TEMPLATES).format(*words)
            lines.append(f'{j + 1}. "{riddle}"' if j % 3 == 0 else riddle)
        lines += [first_example, "I'm sorry, I can't help with more riddles."]  # a copied seed and a refusal
        return "expand", "\n".join(lines)
    if "Reply A:" in prompt and "Reply B:" in prompt:
        # A judge that prefers the longer reply (a rule the tests can check independently of the order shown).
        a = prompt.split("Reply A:\n", 1)[1].split("\n\nReply B:", 1)[0]
        b = prompt.split("Reply B:\n", 1)[1].split("\n\nWhich reply", 1)[0]
        return "judge", "A" if len(a) >= len(b) else "Reply B is better."
    if "user says" in prompt or "follow-up" in prompt:
        return "user", f'user: "Cool! So why does the {_pick(h, 0, WORDS)} do that?"'
    return "assistant", (
        f"The answer is a {_pick(h, 0, WORDS)}. Step by step: the clue points to something you can touch, "
        f"and a {_pick(h, 1, WORDS)} fits every part of it."
    )


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}}, digest, "?")
        if srv.api_key and self.headers.get("authorization") != f"Bearer {srv.api_key}":
            return self._send(401, {"error": {"message": "invalid api key"}}, digest, "?")
        status = srv.next_failure()
        if status:
            return self._send(
                status, {"error": {"message": "injected failure"}}, digest, "?", {"Retry-After": srv.retry_after}
            )
        with srv._lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        time.sleep(srv.delay_s)
        with srv._lock:
            srv.in_flight -= 1
        kind, text = reply_for(body, srv.judge)
        pt = sum(len(m["content"].split()) for m in body["messages"])
        usage = {"prompt_tokens": pt, "completion_tokens": len(text.split()), "total_tokens": pt + len(text.split())}
        payload = {
            "id": digest,
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }
        self._send(200, payload, digest, kind)

    def _send(self, status: int, payload: dict, digest: str, kind: str, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        # Logged before the answer goes out, so a client holding an answer finds it in the log.
        row = self.server.log.add(digest=digest, status=status, kind=kind)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (
            BrokenPipeError,
            ConnectionResetError,
        ):  # the client is gone (a test killed it mid-request): not answered
            self.server.log.hung_up(row)


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        api_key: str | None = None,
        failures=(),
        delay_s: float = 0.0,
        port: int = 0,
        retry_after: str = "0.01",
        judge: str = "longer",
    ):
        super().__init__(("127.0.0.1", port), Handler)
        self.api_key, self.delay_s, self.log, self.retry_after, self.judge = api_key, delay_s, Log(), retry_after, judge
        self._failures, self._lock = list(failures), threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def next_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


if __name__ == "__main__":  # serve for manual trials: python tests/openai_server.py [PORT] [DELAY_S]
    import sys

    server = FakeOpenAI(
        delay_s=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0, port=int(sys.argv[1]) if len(sys.argv) > 1 else 8077
    )
    print(f"serving {server.base_url}", flush=True)
    server.serve_forever()
