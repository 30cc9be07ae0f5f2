"""One generation thread owns the model; requests wait in a bounded queue and compatible ones share a batch.

Why one thread: a model (and its Rust tokenizer, whose settings `padding=True` mutates) must not be used
by two requests at once, and on one device parallel generate calls only fight over the same compute.
Batching instead gives the throughput: non-streaming, unseeded requests with the same sampling settings
that are waiting together run as one left-padded `generate` call.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

from phinetune.infer.complete import CallbackStreamer, Completion, Sampling, complete
from phinetune.runs.loading import Loaded


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows (answered 429)."""


class PromptTooLong(Exception):
    """Prompt plus max_tokens exceed the model's context (answered 400)."""


@dataclass
class Job:
    prompts: list[str]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    on_text: Optional[Callable[[str], None]] = None  # set for streaming: called from the worker thread
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)

    def key(self) -> Optional[tuple]:
        """Jobs with equal non-None keys may be batched together."""
        base = self.sampling.batch_key()
        return None if base is None or self.on_text else (base, tuple(self.stop))


class Worker:
    def __init__(self, loaded: Loaded, max_queue: int = 64, max_batch: int = 8, context_length: Optional[int] = None):
        self.loaded, self.max_queue, self.max_batch = loaded, max_queue, max_batch
        self.context_length = context_length
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopped = False
        self.served = 0
        self._thread = threading.Thread(target=self._loop, name="phinetune-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._cv:
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"server busy: {len(self._jobs)} requests already queued (--max-queue {self.max_queue}); retry later")
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            self._run(group)

    def _next_group(self) -> Optional[list[Job]]:
        with self._cv:
            while not self._jobs and not self._stopped:
                self._cv.wait()
            if self._stopped:
                for job in self._jobs:
                    job.future.set_exception(RuntimeError("server shutting down"))
                return None
            first = self._jobs.popleft()
            group, size = [first], len(first.prompts)
            if first.key() is not None:
                for job in list(self._jobs):
                    if job.key() == first.key() and size + len(job.prompts) <= self.max_batch:
                        self._jobs.remove(job)
                        group.append(job)
                        size += len(job.prompts)
            return group

    def _run(self, group: list[Job]) -> None:
        live = [j for j in group if not j.cancel.is_set() and self._fits(j)]
        for job in group:
            if job.cancel.is_set() and not job.future.done():
                job.future.set_result([])
        if not live:
            return
        try:
            results = self._generate(live)
        except BaseException as exc:  # never let the worker thread die: the request gets the error
            for job in live:
                job.future.set_exception(exc)
            return
        at = 0
        for job in live:
            job.future.set_result(results[at:at + len(job.prompts)])
            at += len(job.prompts)
        self.served += len(live)

    def _fits(self, job: Job) -> bool:
        if self.context_length is None:
            return True
        tok = self.loaded.tokenizer
        longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in job.prompts)
        if longest + job.sampling.max_new_tokens <= self.context_length:
            return True
        job.future.set_exception(PromptTooLong(
            f"the prompt has {longest} tokens and max_tokens is {job.sampling.max_new_tokens}: together more than "
            f"the model's context of {self.context_length} tokens; shorten the prompt or lower max_tokens"))
        return False

    def _generate(self, jobs: list[Job]) -> list[Completion]:
        first = jobs[0]
        streamer = CallbackStreamer(self.loaded.tokenizer, first.on_text) if first.on_text else None
        prompts = [p for j in jobs for p in j.prompts]
        return complete(self.loaded, prompts, first.sampling, first.stop, streamer=streamer, cancel=first.cancel if len(jobs) == 1 else None)
