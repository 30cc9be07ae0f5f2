"""serve/worker.py: one generation thread, a bounded queue (429 when full), compatible requests batched."""

from __future__ import annotations

import threading

import pytest

from phinetune.infer.complete import Completion, Sampling
from phinetune.serve.worker import Job, PromptTooLong, QueueFull, Worker


class Gate:
    """Stands in for the model: records each batch it is given and waits until released."""

    def __init__(self):
        self.release, self.entered, self.groups = threading.Event(), threading.Event(), []

    def __call__(self, jobs):
        self.groups.append([j.prompts[0] for j in jobs])
        self.entered.set()
        self.release.wait(10)
        return [Completion(p.upper(), 1, 1, "stop") for j in jobs for p in j.prompts]


def _worker(max_queue=8, max_batch=8, context=None):
    worker = Worker(loaded=None, max_queue=max_queue, max_batch=max_batch, context_length=context)
    gate = Gate()
    worker._generate = gate
    return worker, gate


def test_waiting_compatible_requests_share_a_batch_and_results_go_back_to_each():
    worker, gate = _worker()
    greedy = Sampling(max_new_tokens=4)
    first = worker.submit(Job(["a"], greedy))
    assert gate.entered.wait(10)
    jobs = [
        Job(["b"], greedy),
        Job(["c"], Sampling(max_new_tokens=4, seed=1)),
        Job(["d"], greedy),
        Job(["e"], Sampling(max_new_tokens=5)),
        Job(["f"], greedy, on_text=lambda t: None),
    ]
    futures = [worker.submit(j) for j in jobs]
    gate.release.set()
    assert [f.result(10)[0].completion.text for f in [first, *futures]] == ["A", "B", "C", "D", "E", "F"]
    # b and d share sampling settings; the seeded, the differently-sized and the streaming requests run alone
    assert gate.groups == [["a"], ["b", "d"], ["c"], ["e"], ["f"]]
    worker.stop()


def test_a_full_queue_is_refused_not_crashed():
    worker, gate = _worker(max_queue=2)
    worker.submit(Job(["a"], Sampling()))
    assert gate.entered.wait(10)  # "a" is running; the queue is empty again
    worker.submit(Job(["b"], Sampling()))
    worker.submit(Job(["c"], Sampling()))
    with pytest.raises(QueueFull, match="2 requests already queued"):
        worker.submit(Job(["d"], Sampling()))
    gate.release.set()
    worker.stop()


def test_model_errors_reach_the_request_and_the_worker_survives():
    worker, gate = _worker()
    calls = []

    def flaky(jobs):
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [Completion("ok", 1, 1, "stop")]

    worker._generate = flaky
    with pytest.raises(RuntimeError, match="boom"):
        worker.submit(Job(["a"], Sampling(seed=1))).result(10)
    assert worker.submit(Job(["b"], Sampling(seed=1))).result(10)[0].completion.text == "ok"
    worker.stop()


def test_prompt_plus_max_tokens_over_the_context_is_refused(tiny_run):
    from phinetune.runs.loading import load_for_inference

    loaded = load_for_inference(str(tiny_run), "fp32")
    worker = Worker(loaded, context_length=20)
    with pytest.raises(PromptTooLong, match="context of 20 tokens"):
        worker.submit(Job(["word " * 30], Sampling(max_new_tokens=4))).result(30)
    assert worker.submit(Job(["word"], Sampling(max_new_tokens=2))).result(30)[0].completion.completion_tokens <= 2
    worker.stop()


def test_batches_are_grouped_by_adapter_and_each_runs_with_its_own(monkeypatch):
    """As vLLM's multi-LoRA: requests for different adapters never share a generate call, and each call runs with its adapter."""
    worker, gate = _worker()
    active = []

    class Switch:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            active.append(self.name)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(worker, "_adapter", Switch)
    greedy = Sampling(max_new_tokens=4)
    first = worker.submit(Job(["a"], greedy, adapter="x"))
    assert gate.entered.wait(10)
    jobs = [
        Job(["b"], greedy, adapter="y"),
        Job(["c"], greedy, adapter="x"),
        Job(["d"], greedy, adapter="y"),
        Job(["e"], greedy),
    ]
    futures = [worker.submit(j) for j in jobs]
    gate.release.set()
    assert [f.result(10)[0].completion.text for f in [first, *futures]] == ["A", "B", "C", "D", "E"]
    assert gate.groups == [["a"], ["b", "d"], ["c"], ["e"]] and active == ["x", "y", "x", None]
    worker.stop()


def test_a_cancelled_waiter_does_not_kill_the_worker():
    worker, gate = _worker()
    worker.submit(Job(["a"], Sampling(seed=1)))
    assert gate.entered.wait(10)
    gone = Job(["b"], Sampling(seed=1))
    worker.submit(gone)
    assert gone.future.cancel()  # its client went away while it waited (asyncio.wrap_future cancels like this)
    gate.release.set()
    assert worker.submit(Job(["c"], Sampling(seed=1))).result(10)[0].completion.text == "C" and worker.alive
    worker.stop()
