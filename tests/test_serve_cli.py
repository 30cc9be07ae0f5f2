"""`phinetune serve RUN_A RUN_B` end to end, a real uvicorn process on loopback:

- lm-eval's own `local-completions` model scores ARC-Easy through /v1/completions (echo + logprobs), and its
  scores equal `phinetune eval`'s (eval/compare.py) on the same items, for an adapter and for the base;
- each model id answers with its own adapter (greedy, equal to `complete` on that run loaded alone);
- SIGTERM lets an in-flight stream finish before the process exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import SRC, TINY_OVERRIDES

pytestmark = pytest.mark.slow  # a trained run, a server process and two lm-eval runs: about a minute

FIXTURE = Path(__file__).parent / "fixtures" / "evalsets"
LIMIT = 8


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """A second LoRA run on the same tiny base, trained differently (other data limit and learning rate; the tiny base is built from the seed, so the seed stays)."""
    from phinetune.config import load_config
    from phinetune.train.recipe import train

    out = tmp_path_factory.mktemp("tiny-run-b") / "run-b"
    cfg = load_config(None, TINY_OVERRIDES + ["data.limit=16", "train.learning_rate=3e-2", f"output.dir={out}"])
    return train(cfg).run.path


@pytest.fixture(scope="module")
def runs(tiny_run, run_b, tmp_path_factory):
    """Copies of both runs (phinetune eval writes RUN/eval.json; the session's tiny_run stays untouched)."""
    root = tmp_path_factory.mktemp("served")
    a, b = root / "run-a", root / "run-b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(run_b, b)
    return a, b


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    port, log = _port(), tmp_path_factory.mktemp("logs") / "access.jsonl"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("PHINETUNE_QUIET", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phinetune",
            "serve",
            str(runs[0]),
            str(runs[1]),
            "--port",
            str(port),
            "--max-tokens",
            "32",
            "--access-log",
            str(log),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    assert proc.poll() is None, proc.stdout.read()
    yield {"url": url, "proc": proc, "log": log}
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def _base_name(run: Path) -> str:
    from phinetune.runs.folders import open_run

    return Path(open_run(run).read_info().base_model).name


def test_models_lists_each_adapter_and_the_base(server, runs):
    ids = [m["id"] for m in httpx.get(f"{server['url']}/v1/models").json()["data"]]
    assert ids == ["run-a", "run-b", _base_name(runs[0])]


def test_each_name_answers_with_its_own_adapter(server, runs):
    from phinetune.infer.complete import Sampling, complete
    from phinetune.runs.loading import load_for_inference

    prompts = ["The piano", "A riddle: what has keys", "Water"]
    got, base = {}, _base_name(runs[0])
    for name in ("run-a", "run-b", base):
        body = {"model": name, "prompt": prompts, "max_tokens": 12, "temperature": 0}
        res = httpx.post(f"{server['url']}/v1/completions", json=body, timeout=120)
        assert res.status_code == 200, res.text
        got[name] = [c["text"] for c in res.json()["choices"]]
    for name, target, adapter in (("run-a", runs[0], True), ("run-b", runs[1], True), (base, runs[0], False)):
        alone = load_for_inference(str(target), "auto", adapter=adapter)  # the run loaded by itself, as `generate` does
        assert got[name] == [c.text for c in complete(alone, prompts, Sampling(max_new_tokens=12))], name
    assert got["run-a"] != got["run-b"] != got[base]  # the three really are different models


def test_startup_prints_what_each_adapter_costs(server, runs):
    """Memory grows by the adapter's weights, not by another base: the growth is close to adapter_model.safetensors."""
    # (the banner the server printed is checked at its shutdown, last test; here the same code, in process)
    from phinetune.runs.loading import load_for_inference
    from phinetune.runs.run_dir import RunDir
    from phinetune.serve.adapters import load_served, tensor_bytes

    one = tensor_bytes(load_for_inference(str(runs[0]), "auto").model)
    served = load_served([str(runs[0]), str(runs[1])])
    grown = tensor_bytes(served.loaded.model) - one
    adapter_file = sum(f.stat().st_size for f in RunDir(runs[1]).adapter.glob("*.safetensors"))
    assert 0.9 * adapter_file <= grown <= 1.1 * adapter_file + 4096
    assert served.memory[1].startswith("+ adapter 'run-b': +")


def _lm_eval_scores(url: str, model: str, tokenizer: Path):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from phinetune.eval.harness import run_harness
    from phinetune.eval.tasks import TASKS

    lm = LocalCompletionsAPI(
        base_url=f"{url}/v1/completions",
        model=model,
        tokenizer_backend="huggingface",
        tokenizer=str(tokenizer),
        batch_size=4,
        max_retries=1,
        max_length=1024,
    )
    return run_harness(lm, [TASKS["arc_easy"]], LIMIT, 0, FIXTURE)["arc_easy"]


def test_lm_eval_local_completions_through_the_server_equals_phinetune_eval(server, runs, tmp_path, monkeypatch):
    """The server scores what lm-eval asks (token ids, echo, logprobs=1, max_tokens=1), for the adapter and the base."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity", reason="lm-eval's API models need its [api] extra: pip install 'lm-eval[api]'")
    from phinetune.eval.compare import EvalPlan, evaluate_run
    from phinetune.eval.tasks import TASKS
    from phinetune.runs.run_dir import RunDir

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    ours = evaluate_run(
        str(runs[0]), EvalPlan([TASKS["arc_easy"]], LIMIT, 0, FIXTURE, 8, False)
    )  # what `phinetune eval` runs
    for label, model in (("tuned", "run-a"), ("base", _base_name(runs[0]))):
        theirs = _lm_eval_scores(server["url"], model, RunDir(runs[0]).tokenizer)
        mine = ours[label]["arc_easy"]
        assert theirs.n == mine["n"] == LIMIT
        for a, b in zip(mine["items"], theirs.items):  # per item and option: the same log-likelihoods
            assert a["lls"] == pytest.approx(b["lls"], abs=2e-4)
            assert a["hits"] == b["hits"]
        assert mine["metrics"] == pytest.approx(theirs.metrics, abs=1e-9)


def test_access_log_is_one_json_line_per_request_without_prompts(server):
    httpx.post(f"{server['url']}/v1/completions", json={"model": "run-a", "prompt": "secret words", "max_tokens": 2})
    time.sleep(0.2)
    lines = [json.loads(line) for line in server["log"].read_text().splitlines()]
    assert lines and all({"ts", "method", "path", "status", "latency_ms", "request_id"} <= set(e) for e in lines)
    last = [e for e in lines if e["path"] == "/v1/completions"][-1]
    assert last["model"] == "run-a" and last["status"] == 200 and last["completion_tokens"] >= 1
    assert "secret" not in server["log"].read_text()


def test_sigterm_finishes_the_stream_in_flight(server):
    """Runs last in this module: the server is gone afterwards."""
    body = {"model": "run-b", "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0, "stream": True}
    proc = server["proc"]
    with httpx.stream("POST", f"{server['url']}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert first.startswith("data: ") and rest[-1] == "data: [DONE]"
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    out = proc.stdout.read()
    assert "memory: + adapter 'run-b': +" in out and "serving 'run-a', 'run-b', " in out
    assert "stopped after answering" in out  # the app's shutdown ran: it was not killed
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server['url']}/health", timeout=2)
