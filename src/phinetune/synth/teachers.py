"""Teachers answer chat requests: an OpenAI-compatible HTTP endpoint, or a local Hugging Face model.

Both take a list of Calls and report each finished answer through `on_done` as soon as it exists, so the
caller can journal it before anything else can go wrong.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Optional

from phinetune.errors import PhinetuneError
from phinetune.synth.config import Sampling, TeacherConfig
from phinetune.synth.journal import Entry

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherError(PhinetuneError):
    """The teacher refused or kept failing; answers already received are in the journal."""


@dataclass
class Call:
    key: str
    messages: list[dict]
    sampling: Sampling
    seed: int  # per-call sampling seed derived from the key: reproducible where the endpoint honours it


@dataclass
class Counters:
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "429" / "timeout" -> count


OnDone = Callable[[Call, Entry], None]


# --- OpenAI-compatible endpoint ---------------------------------------------------------------------

class OpenAITeacher:
    """Bounded concurrency (a thread pool of `concurrency`), retries with exponential backoff and jitter."""

    def __init__(self, cfg: TeacherConfig):
        import httpx

        self.cfg = cfg
        self.base_url = (cfg.base_url or os.environ.get("PHINETUNE_TEACHER_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = cfg.api_key or os.environ.get(cfg.api_key_env)
        if self.base_url == DEFAULT_BASE_URL and not self.api_key:
            raise TeacherError(f"teacher.base_url is the OpenAI API but no key was found; set ${cfg.api_key_env} or teacher.api_key (or point teacher.base_url at a local server)")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.Client(timeout=cfg.timeout_s, headers=headers,
                                   limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency))
        self.counters = Counters()
        self.describe = f"{cfg.model} at {self.base_url}"

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
        import httpx

        body = {"model": self.cfg.model, "messages": call.messages, "max_tokens": call.sampling.max_tokens,
                "temperature": call.sampling.temperature, "top_p": call.sampling.top_p, "seed": call.seed}
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.cfg.max_retries + 1):
            last = attempt == self.cfg.max_retries
            try:
                resp = self.client.post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason, retry_after = ("timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"), None
                if last:
                    raise TeacherError(f"teacher {url}: {reason} ({exc}) after {attempt} retries; answers so far are journaled, re-run to resume") from None
            else:
                if resp.status_code == 200:
                    entry = self._parse(resp, call)
                    if entry is not None:
                        return entry
                    reason, retry_after = "malformed 200 response", None
                else:
                    self._raise_if_fatal(resp, url)
                    reason, retry_after = str(resp.status_code), resp.headers.get("retry-after")
                if last:
                    raise TeacherError(f"teacher {url}: still failing ({reason}) after {attempt} retries; answers so far are journaled, re-run to resume")
            self.counters.retries += 1
            self.counters.errors[reason] = self.counters.errors.get(reason, 0) + 1
            time.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        delay = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        try:
            return max(delay, min(float(retry_after), self.cfg.max_backoff_s)) if retry_after else delay
        except ValueError:  # an HTTP-date Retry-After: fall back to our own backoff
            return delay

    def _raise_if_fatal(self, resp, url: str) -> None:
        code = resp.status_code
        if code in RETRYABLE or code >= 500:
            return
        detail = resp.text[:200].replace("\n", " ")
        if code in (401, 403):
            source = "teacher.api_key" if self.cfg.api_key else f"${self.cfg.api_key_env}"
            raise TeacherError(f"teacher {url} rejected the API key (HTTP {code}); check {source} ({detail})")
        if code == 404:
            raise TeacherError(f"teacher {url} answered 404: check teacher.base_url (it should end in /v1) and teacher.model={self.cfg.model!r} ({detail})")
        raise TeacherError(f"teacher {url} refused the request (HTTP {code}): {detail}")

    def _parse(self, resp, call: Call) -> Optional[Entry]:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = usage.get("cost")  # some gateways (OpenRouter) report the charge itself
        if cost is None:
            cost = (pt * self.cfg.price_input_per_1m + ct * self.cfg.price_output_per_1m) / 1e6
        # The endpoint's response id is kept so a journal line can be matched with the provider's logs and bill.
        return Entry(call.key, text, pt, ct, float(cost), choice.get("finish_reason"), {"response_id": data.get("id")})

    def close(self) -> None:
        self.client.close()


# --- local Hugging Face model ---------------------------------------------------------------------

class LocalTeacher:
    """Batched generate() with the model's own chat template; a run folder, merged folder, model id or tiny-* name."""

    def __init__(self, cfg: TeacherConfig):
        from phinetune.runs.loading import load_for_inference

        self.cfg = cfg
        self.loaded = load_for_inference(cfg.model, cfg.dtype, cfg.quant)  # a tiny-* name is built once into the cache
        self.counters = Counters()
        self.describe = f"local model {cfg.model}"

    def run(self, calls: list[Call], on_done: OnDone) -> None:
        from phinetune.infer.complete import Sampling as GenSampling, generate_batch

        groups: dict[tuple, list[Call]] = {}
        for call in calls:  # one generate() per batch needs one sampling setting
            groups.setdefault((call.sampling.max_tokens, call.sampling.temperature, call.sampling.top_p), []).append(call)
        for group in groups.values():
            sampling = group[0].sampling
            for k in range(0, len(group), self.cfg.batch_size):
                batch = group[k:k + self.cfg.batch_size]
                gen = GenSampling(sampling.max_tokens, sampling.temperature, 0, sampling.top_p, seed=batch[0].seed)
                for call, text in zip(batch, generate_batch(self.loaded, [c.messages for c in batch], gen)):
                    on_done(call, Entry(call.key, text, self._count(call.messages), self._count(text), 0.0, None))

    def _count(self, what) -> int:
        tok = self.loaded.tokenizer
        text = what if isinstance(what, str) else tok.apply_chat_template(what, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        pass


def make_teacher(cfg: TeacherConfig):
    builders = {"openai": lambda: OpenAITeacher(cfg), "local": lambda: LocalTeacher(cfg)}
    return builders[cfg.kind]()
