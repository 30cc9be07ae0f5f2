"""One generation thread owns the model; requests wait in a bounded queue and compatible ones share a batch.

Why one thread: a model (and its Rust tokenizer, whose settings `padding=True` mutates) must not be used
by two requests at once, and on one device parallel generate calls only fight over the same compute.
Batching instead gives the throughput: non-streaming, unseeded requests with the same sampling settings
for the same adapter that are waiting together run as one left-padded `generate` call (vLLM's multi-LoRA
groups its batches by adapter the same way; here one adapter is active per call).

Prompts are tokenized here too (the tokenizer belongs to this thread), so the checks that need tokens
(a prompt that tokenizes to nothing, token ids outside the vocabulary, prompt + max_tokens over the context)
answer the request with `Refused` before the model sees it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from contextlib import nullcontext
from dataclasses import dataclass, field

from phinetune.infer.complete import CallbackStreamer, Completion, Sampling, complete
from phinetune.runs.loading import Loaded
from phinetune.serve.logprobs import TokenLogprob, score_tokens


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows (answered 429)."""


class Refused(Exception):
    """A request the model cannot take (answered 400 with this message, naming `param`)."""

    def __init__(self, message: str, param: str = "prompt", code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class PromptTooLong(Refused):
    """Prompt plus max_tokens exceed the model's context."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message, param, "context_length_exceeded")


@dataclass
class Output:
    """One choice: the completion, the prompt's token ids, and the log-probabilities asked for (else None)."""

    completion: Completion
    prompt_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    prompt_text: str | None = None  # set when the prompt is echoed


@dataclass
class Job:
    prompts: list[str | list[int]]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None  # set for streaming: called from the worker thread
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    # Resolved once the prompts are admitted (None) or refused (Refused): a stream waits for it before its
    # response starts, so a refusal is still a clean 400 rather than an error inside a 200 stream.
    admitted: Future = field(default_factory=Future)
    adapter: str | None = None  # the PEFT adapter to run (None: the model without adapters)
    logprobs: int | None = None  # top-k alternatives to return per token (None: no logprobs)
    echo: bool = False  # also score the prompt's tokens (completions' echo)
    generate: bool = True  # False: max_tokens=0, score the prompt only
    param: str = "prompt"  # the request field the prompts came from, for error messages
    ids: list[list[int]] = field(default_factory=list)  # filled by the worker

    def __post_init__(self) -> None:
        self.future.add_done_callback(self._settle_admission)  # finished or failed unadmitted: nothing to wait for

    def _settle_admission(self, _future) -> None:
        try:
            self.admitted.set_result(None)
        except InvalidStateError:  # already admitted or refused
            pass

    def key(self) -> tuple | None:
        """Jobs with equal non-None keys may be batched together."""
        base = self.sampling.batch_key()
        return None if base is None or self.on_text or not self.generate else (base, tuple(self.stop), self.adapter)


class Worker:
    def __init__(self, loaded: Loaded, max_queue: int = 64, max_batch: int = 8, context_length: int | None = None):
        self.loaded, self.max_queue, self.max_batch = loaded, max_queue, max_batch
        self.context_length = context_length
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopped = False
        self.served = 0
        self.busy = False  # a batch is on the model now
        self.on_batch: Callable[[list[Job], list[Output]], None] | None = None  # metrics hook
        self._thread = threading.Thread(target=self._loop, name="phinetune-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._cv:
            if self._stopped:
                raise QueueFull("server shutting down; retry on another instance")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(
                    f"server busy: {len(self._jobs)} requests already queued (--max-queue {self.max_queue}); retry later"
                )
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    @property
    def queued(self) -> int:
        return len(self._jobs)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Finish what is queued (a graceful shutdown lets in-flight requests complete), then end the thread."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            self.busy = True
            try:
                self._run(group)
            finally:
                self.busy = False

    def _next_group(self) -> list[Job] | None:
        with self._cv:
            while not self._jobs and not self._stopped:
                self._cv.wait()
            if not self._jobs:
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
        live = []
        for job in group:
            # A future its waiter cancelled (a client gone, a timeout) is skipped; one marked running can no longer be
            # cancelled, so setting its result below cannot fail (and kill this thread).
            if not job.future.set_running_or_notify_cancel():
                continue
            if job.cancel.is_set():
                job.future.set_result([])
            elif self._admit(job):
                live.append(job)
        if not live:
            return
        try:
            with self._adapter(live[0].adapter):
                results = (
                    self._generate(live)
                    if live[0].generate
                    else [Completion("", len(i), 0, "length") for i in live[0].ids]
                )
                outputs = self._score(live, results)
        except BaseException as exc:  # never let the worker thread die: the request gets the error
            for job in live:
                job.future.set_exception(exc)
            return
        at = 0
        for job in live:
            job.future.set_result(outputs[at : at + len(job.prompts)])
            at += len(job.prompts)
        self.served += len(live)
        if self.on_batch:
            self.on_batch(live, outputs)

    def _admit(self, job: Job) -> bool:
        """Tokenize the job's prompts and refuse what the model cannot take; False when refused."""
        try:
            job.ids = [self._encode(p, i, job) for i, p in enumerate(job.prompts)]
            self._check_fits(job)
        except Refused as exc:
            job.admitted.set_exception(exc)
            job.future.set_exception(exc)
            return False
        job.admitted.set_result(None)
        return True

    def _encode(self, prompt: str | list[int], index: int, job: Job) -> list[int]:
        if self.loaded is None:  # tests drive the queue with a stand-in model
            return [0] * max(len(prompt), 1)
        where = job.param if len(job.prompts) == 1 else f"{job.param}[{index}]"
        if isinstance(prompt, str):
            ids = self.loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if not ids:
                raise Refused(
                    f"{where} tokenizes to no tokens at all ({prompt[:40]!r}); send some text for the model to continue",
                    job.param,
                )
            return ids
        vocab = self.loaded.model.get_input_embeddings().num_embeddings
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise Refused(f"{where} holds token id {bad[0]}, outside this model's vocabulary of {vocab} ids", job.param)
        return list(prompt)

    def _check_fits(self, job: Job) -> None:
        if self.context_length is None:
            return
        longest = max(len(i) for i in job.ids)
        wanted = job.sampling.max_new_tokens if job.generate else 0
        if longest + wanted > self.context_length:
            room = self.context_length - longest
            hint = f"lower max_tokens to at most {room}" if room > 0 else "shorten the prompt"
            raise PromptTooLong(
                f"the prompt has {longest} tokens and max_tokens is {wanted}: together more than the model's "
                f"context of {self.context_length} tokens; {hint}",
                job.param,
            )

    def _adapter(self, name: str | None):
        from phinetune.serve.adapters import use_adapter

        return use_adapter(self.loaded.model, name) if self.loaded is not None else nullcontext()

    def _generate(self, jobs: list[Job]) -> list[Completion]:
        first = jobs[0]
        streamer = CallbackStreamer(self.loaded.tokenizer, first.on_text) if first.on_text else None
        prompts = [i for j in jobs for i in j.ids]
        return complete(
            self.loaded,
            prompts,
            first.sampling,
            first.stop,
            streamer=streamer,
            cancel=first.cancel if len(jobs) == 1 else None,
        )

    def _score(self, jobs: list[Job], results: list[Completion]) -> list[Output]:
        outputs, at = [], 0
        for job in jobs:
            for prompt, ids in zip(job.prompts, job.ids):
                result, scored, echoed = results[at], None, None
                if job.logprobs is not None:
                    start = 0 if job.echo else len(ids)
                    scored = score_tokens(self.loaded, ids + result.token_ids, start, job.logprobs)
                if job.echo:
                    echoed = prompt if isinstance(prompt, str) else self.loaded.tokenizer.decode(ids)
                outputs.append(Output(result, ids, scored, echoed))
                at += 1
        return outputs
