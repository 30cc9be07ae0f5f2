"""End to end: `phinetune synth` against a real local HTTP server and a tiny local model; killed and resumed;
its output trains with `phinetune train` as is."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, SRC, cli_here
from openai_server import FakeOpenAI
from phinetune.data.readers import read_records
from phinetune.synth.config import load_synth_config
from phinetune.synth.run import run_synth

RIDDLES = str(ROOT / "configs" / "synth" / "riddles.yaml")
QA = str(ROOT / "configs" / "synth" / "qa_followup.yaml")


def journal(out: Path) -> dict[str, dict]:
    # Everything up to the last newline; text after it would be a line torn by the kill (the journal cuts it off).
    rows = [json.loads(line) for line in (out / "journal.jsonl").read_text().split("\n")[:-1]]
    assert len(rows) == len({r["key"] for r in rows}), "a key was journaled twice"
    return {r["key"]: r for r in rows}


def overrides(srv: FakeOpenAI, out: Path, *extra: str) -> list[str]:
    return [
        f"teacher.base_url={srv.base_url}",
        f"output.dir={out}",
        "teacher.concurrency=2",
        "teacher.price_input_per_1m=1.0",
        "teacher.price_output_per_1m=2.0",
        *extra,
    ]


def test_riddles_recipe_over_http_and_resume_in_process(tmp_path):
    with FakeOpenAI(failures=[429, 503]) as srv:
        cfg = load_synth_config(RIDDLES, overrides(srv, tmp_path / "out", "stages.riddles.calls=6"))
        first = run_synth(cfg)
        again = run_synth(cfg)
        answered = len(srv.log.answered())
    assert first.calls_made == answered == first.calls_from_journal + first.calls_made
    assert again.calls_made == 0 and again.calls_from_journal == first.calls_made  # nothing asked twice
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["stages"]["clean"]["removed"]["refusal_or_meta"] == 12  # 6 calls x (header + refusal)
    assert stats["stages"]["clean"]["removed"]["exact_duplicate_of_seed"] == 6  # each call copies a seed back
    assert stats["spend_total"]["cost"] > 0 and stats["spend_total"]["prompt_tokens"] > 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "conversations.jsonl").read_text().splitlines()]
    assert len(rows) == first.conversations == stats["conversations"] > 20
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
        assert not row["messages"][0]["content"][0].isdigit() and '"' not in row["messages"][0]["content"]
        assert row["messages"][2]["content"].startswith("Cool!")  # 'user: "..."' label and quotes stripped
    assert len(read_records(str(tmp_path / "out" / "conversations.jsonl"))) == len(
        rows
    )  # the trainer's reader accepts it


def test_changed_prompt_is_a_new_call_and_the_rest_is_reused(tmp_path):
    with FakeOpenAI() as srv:
        run_synth(load_synth_config(QA, overrides(srv, tmp_path, "seeds.limit=4")))
        changed = run_synth(
            load_synth_config(
                QA,
                overrides(
                    srv,
                    tmp_path,
                    "seeds.limit=4",
                    "stages.followup.prompt='Ask a follow-up question about: {conversation}'",
                ),
            )
        )
    assert changed.calls_made == 8 and changed.calls_from_journal == 4  # answers to the questions were reused


@pytest.mark.slow
def test_kill_mid_run_then_resume_repeats_nothing_and_loses_nothing(tmp_path):
    concurrency = 2
    with FakeOpenAI(delay_s=0.02) as srv:
        out = tmp_path / "killed"
        args = ["synth", RIDDLES, *overrides(srv, out, "stages.riddles.calls=6", f"teacher.concurrency={concurrency}")]
        env = {**os.environ, "PYTHONPATH": str(SRC), "PHINETUNE_QUIET": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "phinetune", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        path = out / "journal.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 30:  # mid-way through the answer stage
                break
            time.sleep(0.005)
        assert proc.poll() is None, "synth finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)  # let the server finish requests that were in flight, so its log is complete
        before = journal(out)
        answered_at_kill = Counter(srv.log.answered())
        assert 30 <= len(before) < 100 and not (out / "conversations.jsonl").exists()

        cli_here(*args)  # resume
        after = journal(out)
        answered = Counter(srv.log.answered())
        resumed_stats = json.loads((out / "stats.json").read_text())

        reference = tmp_path / "reference"  # the same run, never interrupted (in-process: faster, same code)
        run_synth(
            load_synth_config(
                RIDDLES, overrides(srv, reference, "stages.riddles.calls=6", f"teacher.concurrency={concurrency}")
            )
        )

    # No finished answer lost: every line journaled before the kill is still there, unchanged.
    assert all(after[k]["text"] == row["text"] for k, row in before.items())
    # No completed teacher call repeated: over the killed run and the resume together, the server answered
    # each request whose answer was journaled before the kill exactly once ...
    journaled_at_kill = {row["response_id"] for row in before.values()}
    assert all(answered[d] == 1 for d in journaled_at_kill)
    # ... and asked again only requests that were in flight at the kill (answered, never received by synth).
    repeated = {d: n - 1 for d, n in answered.items() if n > 1}
    assert not (set(repeated) & journaled_at_kill) and sum(repeated.values()) <= concurrency
    assert set(repeated) <= set(answered_at_kill)
    assert sum(answered.values()) == len(after) + sum(repeated.values())
    assert resumed_stats["calls"]["made_this_run"] == len(after) - len(before)
    assert resumed_stats["calls"]["from_journal"] == len(before)
    # Complete: the resumed output is exactly the uninterrupted run's.
    assert (out / "conversations.jsonl").read_text() == (reference / "conversations.jsonl").read_text()
    assert journal(reference).keys() == after.keys()

    # The output trains with `phinetune train` as is.
    proc = cli_here(
        "train",
        "model.name=tiny-phi3",
        f"data.train={out / 'conversations.jsonl'}",
        "data.eval_size=4",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.eval_every=2",
        f"output.dir={tmp_path / 'run'}",
    )
    assert "after 2 steps" in proc.stdout
    assert (tmp_path / "run" / "run.json").exists()


@pytest.mark.slow
def test_local_tiny_model_as_teacher(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(
        'question\nWhat has keys but no locks?\nWhat gets wetter as it dries?\n"What runs, but never walks?"\n'
    )
    args = [
        f"seeds.path={seeds}",
        "seeds.field=question",
        "teacher.kind=local",
        "teacher.model=tiny-phi3",
        "teacher.batch_size=2",
        "sampling.max_tokens=6",
        "sampling.temperature=1.0",
        "stages.followup.max_chars=1000",
        f"output.dir={tmp_path / 'out'}",
    ]
    first = run_synth(load_synth_config(QA, args))
    again = run_synth(load_synth_config(QA, args))
    rows = journal(tmp_path / "out")
    assert first.calls_made == len(rows) == sum(s["calls"] for s in first.stats["stages"].values())
    assert first.stats["stages"]["answer"]["calls"] == 3
    assert again.calls_made == 0 and again.stats["calls"]["from_journal"] == len(rows)
    assert all(r["completion_tokens"] > 0 for r in rows.values())
    assert first.conversations == again.conversations >= 1
    convs = read_records(str(tmp_path / "out" / "conversations.jsonl"))
    assert all(len(r.sample["messages"]) == 4 for r in convs)


def test_a_teacher_where_nothing_listens_fails_at_once_naming_the_url(tmp_path):
    """`phinetune synth` against a local port nothing listens on: one sentence with the URL in seconds, not the
    SDK's half a minute of retries."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    start = time.perf_counter()
    proc = cli_here(
        "synth",
        RIDDLES,
        f"teacher.base_url={url}",
        f"output.dir={tmp_path / 'out'}",
        "stages.riddles.calls=2",
        check=False,
    )
    elapsed = time.perf_counter() - start
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and f"teacher {url}: connection refused, nothing listens there" in out, (
        out + proc.stderr
    )
    # The SDK's retries would sleep over 27 s in all; the bound leaves a loaded machine 20 s for the command itself.
    assert "Traceback" not in proc.stdout + proc.stderr and elapsed < 20, f"{elapsed:.1f} s"
