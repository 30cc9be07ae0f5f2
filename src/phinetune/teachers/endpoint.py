"""A teacher behind an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp, OpenAI, a gateway).

The openai SDK makes the requests and retries them; this adds bounded concurrency, a refused connection that fails
at once, counters for the progress bar, and sentences that name the settings as the caller's user spells them.
"""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from urllib.parse import urlsplit

from phinetune.teachers.calls import Call, Counters, OnDone, TeacherError
from phinetune.teachers.config import TeacherConfig
from phinetune.teachers.journal import Entry

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# How the user spells each teacher setting, for the sentences below: synth's config keys by default; `judge`
# passes its flags (eval/judge.py JUDGE_FLAGS), which have no api_key.
CONFIG_KEYS = {"base_url": "teacher.base_url", "api_key": "teacher.api_key", "model": "teacher.model"}


def refused(exc: BaseException | None) -> bool:
    """Whether a connection attempt was refused (nothing listens at that address), anywhere in the exception chain."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _http_client(event_hooks: dict):
    """The SDK's own httpx client, except that a refused connection is raised as the SDK's APIConnectionError.

    The SDK retries every transport error max_retries times (27-44 s at the default 6), but passes an OpenAIError
    raised by the client on at once. A refused connection is not transient (nothing listens there: a server not
    started, a wrong port), so it fails at once; resets, timeouts, 429 and 5xx keep the SDK's retries."""
    import openai

    class FailFastClient(openai.DefaultHttpxClient):
        def send(self, request, **kwargs):
            try:
                return super().send(request, **kwargs)
            except Exception as exc:
                if refused(exc):
                    raise openai.APIConnectionError(message="connection refused", request=request) from exc
                raise

    return FailFastClient(event_hooks=event_hooks)


class OpenAITeacher:
    """Bounded concurrency (a thread pool of `concurrency`); retries are the openai SDK's own.

    The SDK retries 408, 409, 429, 5xx, timeouts and connection errors `max_retries` times with exponential
    backoff and jitter, and waits what a Retry-After header asks; a refused connection fails at once (_http_client).
    We only count the attempts it makes (httpx event hooks, per thread) so the progress bar can show retries, and
    turn its final errors into sentences that name the settings as `names` spells them.
    """

    def __init__(self, cfg: TeacherConfig, names: dict | None = None):
        import openai

        self.cfg, self.names = cfg, names or CONFIG_KEYS
        self.base_url = (
            cfg.base_url
            or os.environ.get("PHINETUNE_TEACHER_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
            or DEFAULT_BASE_URL
        ).rstrip("/")
        self.api_key = cfg.api_key or os.environ.get(cfg.api_key_env)
        if self.base_url == DEFAULT_BASE_URL and not self.api_key:
            key = f"${cfg.api_key_env}" + (f" or {self.names['api_key']}" if "api_key" in self.names else "")
            raise TeacherError(
                f"{self.names['base_url']} is the OpenAI API but no key was found; set {key} "
                f"(or point {self.names['base_url']} at a local server)"
            )
        self.counters, self._lock, self._mine = Counters(), threading.Lock(), threading.local()
        # No connection limit of our own: the thread pool already bounds the requests in flight.
        http = _http_client({"request": [self._on_request], "response": [self._on_response]})
        # A keyless local server still needs a non-empty key for the SDK; it sends no header we rely on.
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "none",
            max_retries=cfg.max_retries,
            timeout=cfg.timeout_s,
            http_client=http,
        )
        self.describe = f"{cfg.model} at {self.base_url}"

    def check_listening(self) -> None:
        """A loopback endpoint where nothing listens is refused here, in milliseconds, before any slow work (judge
        generates its answers first). Only loopback: elsewhere a proxy may be the way there."""
        url = urlsplit(self.base_url)
        if url.hostname not in ("localhost", "127.0.0.1", "::1") and not (url.hostname or "").startswith("127."):
            return
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=3).close()
        except OSError as exc:
            if refused(exc):
                raise self._refused_error() from None

    def _refused_error(self) -> TeacherError:
        return TeacherError(
            f"teacher {self.base_url}: connection refused, nothing listens there; start the server "
            f"or point {self.names['base_url']} at one"
        )

    def _on_request(self, request) -> None:
        self._mine.attempts = getattr(self._mine, "attempts", 0) + 1

    def _on_response(self, response) -> None:
        self._mine.responses = getattr(self._mine, "responses", 0) + 1
        if response.status_code != 200:
            self._count(str(response.status_code))

    def _count(self, reason: str, n: int = 1) -> None:
        if n > 0:
            with self._lock:
                self.counters.errors[reason] = self.counters.errors.get(reason, 0) + n

    def run(self, calls: list[Call], on_done: OnDone) -> None:
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="teacher")
        futures: dict[Future, Call] = {pool.submit(self.ask, c): c for c in calls}
        pending, failure = set(futures), None
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is None:
                        on_done(futures[fut], fut.result())
                    elif failure is None:
                        failure = fut.exception()
                if failure is not None:
                    # Stop queueing new calls, but journal the answers already in flight: they are paid for.
                    for fut in pending:
                        fut.cancel()
                    pending = {f for f in pending if not f.cancelled()}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure

    def ask(self, call: Call) -> Entry:
        import openai

        url = f"{self.base_url}/chat/completions"
        self._mine.attempts = self._mine.responses = 0
        try:
            for _ in range(self.cfg.max_retries + 1):  # the SDK retries failures; a malformed 200 is ours to retry
                resp = self.client.chat.completions.with_raw_response.create(
                    model=self.cfg.model,
                    messages=call.messages,
                    max_tokens=call.sampling.max_tokens,
                    temperature=call.sampling.temperature,
                    top_p=call.sampling.top_p,
                    seed=call.seed,
                )
                entry = self._parse(resp.http_response, call)
                if entry is not None:
                    return entry
                self._count("malformed 200 response")
            raise TeacherError(
                f"teacher {url}: still failing (malformed 200 response) after {self.cfg.max_retries} retries; "
                "answers so far are journaled, re-run to resume"
            )
        except openai.APITimeoutError:
            raise TeacherError(
                f"teacher {url}: timeout (over {self.cfg.timeout_s}s) after {self.cfg.max_retries} retries; "
                "answers so far are journaled, re-run to resume"
            ) from None
        except openai.APIConnectionError as exc:
            if refused(exc):
                raise self._refused_error() from None
            raise TeacherError(
                f"teacher {url}: connection error ({exc.__cause__ or exc}) after {self.cfg.max_retries} retries; "
                "answers so far are journaled, re-run to resume"
            ) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc, url) from None
        finally:
            self._count("timeout or connection error", self._mine.attempts - self._mine.responses)
            with self._lock:
                self.counters.retries += max(0, self._mine.attempts - 1)

    def _status_error(self, exc, url: str) -> TeacherError:
        code, detail = exc.status_code, exc.response.text[:200].replace("\n", " ")
        if code in (401, 403):
            source = self.names["api_key"] if self.cfg.api_key else f"${self.cfg.api_key_env}"
            return TeacherError(f"teacher {url} rejected the API key (HTTP {code}); check {source} ({detail})")
        if code == 404:
            return TeacherError(
                f"teacher {url} answered 404: check {self.names['base_url']} (it should end in /v1) and "
                f"{self.names['model']} {self.cfg.model!r} ({detail})"
            )
        if code in (408, 409, 429) or code >= 500:  # retryable: the SDK gave up after max_retries
            return TeacherError(
                f"teacher {url}: still failing ({code}) after {self.cfg.max_retries} retries; answers so far are journaled, re-run to resume"
            )
        return TeacherError(f"teacher {url} refused the request (HTTP {code}): {detail}")

    def _parse(self, resp, call: Call) -> Entry | None:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        # A model that declines answers in message.refusal with no content (OpenAI's structured refusals): kept, so a
        # reader of the journal (judge's "no verdict") can say the teacher refused rather than that it said nothing.
        refusal = choice["message"].get("refusal") if isinstance(choice["message"], dict) else None
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = usage.get("cost")  # some gateways (OpenRouter) report the charge itself
        if cost is None:
            cost = (pt * self.cfg.price_input_per_1m + ct * self.cfg.price_output_per_1m) / 1e6
        # The endpoint's response id is kept so a journal line can be matched with the provider's logs and bill.
        extra = {"response_id": data.get("id")} | ({"refusal": str(refusal)} if refusal else {})
        return Entry(call.key, text, pt, ct, float(cost), choice.get("finish_reason"), extra)

    def close(self) -> None:
        self.client.close()
