"""`phinetune judge`: pairwise verdicts in both orders, win/tie/loss with Wilson intervals, journaled and resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from conftest import SRC, cli_here
from openai_server import FakeOpenAI
from phinetune.eval import judge as J
from phinetune.runs.run_dir import RunDir
from phinetune.teachers.calls import TeacherError
from phinetune.teachers.config import TeacherConfig


def test_both_orders_must_agree_for_a_win_or_a_loss():
    # (verdict with B shown second, verdict with B shown first) -> outcome for B, written out by hand
    table = {
        ("second", "first"): "win",
        ("first", "second"): "loss",
        ("first", "first"): "tie",
        ("second", "second"): "tie",
        ("tie", "tie"): "tie",
        ("second", "tie"): "tie",
        ("tie", "second"): "tie",
        (None, "first"): "invalid",
        ("tie", None): "invalid",
    }
    assert {k: J.combine(*k) for k in table} == table


def test_verdict_is_the_last_bracketed_letter():
    assert J.parse_verdict("A is vague, [[B]] is not... final verdict: [[A]]") == "first"
    assert J.parse_verdict("[[C]]") == "tie" and J.parse_verdict("B is better") is None and J.parse_verdict("") is None


def test_wilson_interval_known_values():
    lo, hi = J.wilson(5, 10)  # the textbook example: 0.2366 - 0.7634
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert J.wilson(0, 10)[0] == 0.0 and round(J.wilson(0, 10)[1], 4) == 0.2775 and J.wilson(0, 0) == (0.0, 1.0)


@pytest.fixture
def run(tiny_run, tmp_path):
    """A private copy of the session's tiny run (judge files land in the run folder)."""
    return RunDir(shutil.copytree(tiny_run, tmp_path / "run"))


def teacher(srv, **kw) -> TeacherConfig:
    return TeacherConfig(
        kind="openai",
        model="judge",
        base_url=srv.base_url,
        concurrency=kw.pop("concurrency", 4),
        max_retries=0,
        price_input_per_1m=1.0,
        price_output_per_1m=2.0,
        **kw,
    )


def test_win_rate_follows_the_judge_and_resumes_without_calls(run):
    with FakeOpenAI(judge="longer") as srv:
        result = J.judge_run(str(run.path), teacher(srv), n=4, max_new_tokens=12)
        answered = len(srv.log.answered())
        again = J.judge_run(str(run.path), teacher(srv), n=4, max_new_tokens=12)
        assert len(srv.log.answered()) == answered == 8  # 4 prompts x 2 orders, and none on the re-run
    assert again["calls"] == {"made": 0, "from_journal": 8} and again["counts"] == result["counts"]
    ans = json.loads(run.judge_answers.read_text())["answers"]
    # the fake judge prefers the longer answer in either position, so its verdicts agree across orders
    expected = Counter(
        "win" if len(b) > len(a) else "loss" if len(a) > len(b) else "tie" for a, b in zip(ans["a"], ans["b"])
    )
    assert result["counts"] == {"win": expected["win"], "tie": expected["tie"], "loss": expected["loss"], "invalid": 0}
    assert result["rates"]["win"]["rate"] == expected["win"] / 4
    assert result["rates"]["win"]["ci95"] == list(J.wilson(expected["win"], 4))
    assert result["consistent_share"] == 1.0 and all("answer" in r["reason_b_first"] for r in result["rows"])
    journal = [json.loads(line) for line in run.judge_journal.read_text().splitlines()]
    assert len(journal) == 8 and result["spend"]["cost"] == pytest.approx(
        sum(e["prompt_tokens"] * 1e-6 + e["completion_tokens"] * 2e-6 for e in journal)
    )
    from phinetune.report.page import write_report

    page = write_report(str(run.path), samples=0)[
        0
    ].read_text()  # the report shows the win rate and the judged conversations
    win = result["rates"]["win"]
    assert (
        f"last beats base on {win['rate']:.0%} of 4 prompts (95% interval {win['ci95'][0]:.0%}-{win['ci95'][1]:.0%})"
        in page
    )
    assert "<h2>Judge: last vs base</h2>" in page and page.count("<div class=convo>") == 3


def test_a_judge_that_always_picks_position_a_gives_only_ties(run):
    with FakeOpenAI(judge="first") as srv:
        result = J.judge_run(str(run.path), teacher(srv), n=3, max_new_tokens=8)
    assert result["counts"] == {"win": 0, "tie": 3, "loss": 0, "invalid": 0} and result["consistent_share"] == 0.0


def test_a_reply_without_a_verdict_says_why():
    from phinetune.teachers.journal import Entry

    def why(text, finish="stop", **extra):
        return J.no_verdict_reason(Entry("k", text, finish_reason=finish, extra=extra), 64)

    assert why("A is clearer. [[A]]") is None
    assert why("") == "the judge's reply was empty"
    assert (
        why("", refusal="I can't help with comparing these.")
        == 'the judge refused: "I can\'t help with comparing these."'
    )
    assert why("", finish="content_filter") == "the endpoint's content filter withheld the judge's reply"
    assert (
        why("I'm sorry, but I cannot judge answers about locks.")
        == 'the judge declined to choose: "I\'m sorry, but I cannot judge answers about locks."'
    )
    long = "Assistant A explains the riddle and the reason behind it, while assistant B only names the answer, so on balance"
    assert why(long, finish="length") == (
        'the reply was cut at --judge-max-tokens 64 before a verdict: "Assistant A explains the riddle '
        'and the reason behind it, while assistant B only names the answer…"'
    )  # 100 characters at most
    assert why("Both are fine.\nVerdict: A") == 'no [[A]], [[B]] or [[C]] in the reply: "Both are fine. Verdict: A"'


def test_no_verdict_is_reported_with_its_reason_and_the_reply(run, monkeypatch):
    import openai_server
    from conftest import cli_here

    real = openai_server.judge_reply

    def unsure_when_b_is_second(
        prompt: str, policy: str
    ) -> str:  # one order gets no verdict: the prompt counts as none
        first = prompt.split("[The Start of Assistant A's Answer]\n", 1)[1].split("\n[The End", 1)[0]
        return (
            "Both answers have their merits; I would pick A."
            if first == ans["a"][prompt_index(prompt)]
            else real(prompt, policy)
        )

    with FakeOpenAI(judge="longer") as srv:
        J.judge_run(str(run.path), teacher(srv), n=2, max_new_tokens=6)  # the answers, cached for the CLI run below
        ans = json.loads(run.judge_answers.read_text())["answers"]
        questions = [J.question_text(p) for p in json.loads(run.judge_answers.read_text())["prompts"]]
        prompt_index = lambda prompt: next(i for i, q in enumerate(questions) if q in prompt)  # noqa: E731
        run.judge_journal.unlink()
        monkeypatch.setattr(openai_server, "judge_reply", unsure_when_b_is_second)
        proc = cli_here(
            "judge",
            str(run.path),
            "--judge-model",
            "judge",
            "--base-url",
            srv.base_url,
            "--n",
            "2",
            "--max-new-tokens",
            "6",
            "--concurrency",
            "1",
        )
    out = proc.stdout
    assert "│ no verdict       │     2 │" in out and "no verdict on 2 prompt(s), not counted in the rates:" in out
    result = json.loads(run.judge_result.read_text())
    for row in result["rows"]:
        line = (
            f'"{row["last_turn"]}" (last shown second): no [[A]], [[B]] or [[C]] in the reply: '
            '"Both answers have their merits; I would pick A."'
        )
        assert line in out and row["no_verdict_b_first"] is None
        assert row["no_verdict_b_second"] == line.split("(last shown second): ")[1]


@pytest.mark.slow
def test_kill_mid_judging_then_resume_repeats_no_journaled_call(run):
    n, concurrency = 4, 1
    with FakeOpenAI(judge="longer", delay_s=0.4) as srv:
        env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "PHINETUNE_QUIET": "1"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "phinetune",
                "judge",
                str(run.path),
                "--judge-model",
                "judge",
                "--base-url",
                srv.base_url,
                "--n",
                str(n),
                "--max-new-tokens",
                "8",
                "--concurrency",
                str(concurrency),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 240
        while time.time() < deadline and (
            not run.judge_journal.exists() or len(run.judge_journal.read_text().splitlines()) < 2
        ):
            assert proc.poll() is None, "judge ended before it could be killed: " + proc.stdout.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = {
            json.loads(line)["key"]: json.loads(line)
            for line in run.judge_journal.read_text().splitlines()
            if line.endswith("}")
        }
        assert 2 <= len(before) < 2 * n
        result = J.judge_run(str(run.path), teacher(srv, concurrency=concurrency), n=n, max_new_tokens=8)
        answered = Counter(srv.log.answered())
    assert result["calls"]["from_journal"] == len(before) and result["judged"] == n
    assert all(
        answered[row["response_id"]] == 1 for row in before.values()
    )  # journaled before the kill: never asked again
    assert sum(answered.values()) <= 2 * n + concurrency  # at most the calls in flight at the kill were asked twice


@pytest.mark.slow
def test_local_tiny_model_as_judge(run):
    cfg = TeacherConfig(kind="local", model="tiny-phi3", batch_size=4)
    result = J.judge_run(str(run.path), cfg, n=2, max_new_tokens=8, judge_max_tokens=12)
    journal = [json.loads(line) for line in run.judge_journal.read_text().splitlines()]
    assert len(journal) == 4 and result["calls"] == {"made": 4, "from_journal": 0}
    # a random-weight judge rarely writes a verdict: those prompts are counted as "invalid", not as ties
    no_verdict = sum(
        1
        for r in result["rows"]
        if J.parse_verdict(r["reason_b_second"]) is None or J.parse_verdict(r["reason_b_first"]) is None
    )
    assert result["counts"]["invalid"] == no_verdict and sum(result["counts"].values()) == 2
    for row in result["rows"]:  # each missing verdict says why: a local judge records where its reply hit max tokens
        for order in ("b_second", "b_first"):
            missing = J.parse_verdict(row[f"reason_{order}"]) is None
            assert bool(row[f"no_verdict_{order}"]) == missing
            if missing and len(row[f"reason_{order}"].split()) > 3:
                assert row[f"no_verdict_{order}"].startswith(
                    ("the reply was cut at --judge-max-tokens 12 before a verdict", "no [[A]]")
                )


@pytest.mark.slow
def test_the_projects_own_server_as_judge(run, tiny_run):
    import uvicorn

    from phinetune.runs.loading import load_for_inference
    from phinetune.serve.app import ServeSettings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(load_for_inference(str(tiny_run)), ServeSettings("tiny-judge", None, 64, 1 << 20, 16, 4))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    cfg = TeacherConfig(kind="openai", model="tiny-judge", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    try:
        result = J.judge_run(str(run.path), cfg, n=2, max_new_tokens=8, judge_max_tokens=12)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    journal = [json.loads(line) for line in run.judge_journal.read_text().splitlines()]
    assert len(journal) == 4 and all(e["response_id"] for e in journal) and sum(result["counts"].values()) == 2
    # the server is gone: a re-run must need no judge at all
    assert J.judge_run(str(run.path), cfg, n=2, max_new_tokens=8, judge_max_tokens=12)["calls"] == {
        "made": 0,
        "from_journal": 4,
    }


def test_a_local_judge_where_nothing_listens_fails_before_any_answer_is_generated(run):
    """A refused connection is not transient: one sentence naming the URL and the flag, in seconds, before the two
    models load to answer (RUN/judge/answers.json is not written)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    start = time.perf_counter()
    proc = cli_here("judge", str(run.path), "--judge-model", "m", "--base-url", url, "--n", "1", check=False)
    out = " ".join(proc.stdout.split())
    assert (
        proc.returncode == 2
        and out
        == f"error: teacher {url}: connection refused, nothing listens there; start the server or point --base-url at one"
    )
    # The SDK's retries would sleep over 27 s in all; the bound leaves a loaded machine 20 s for the command itself.
    assert time.perf_counter() - start < 20 and not run.judge_answers.exists()


def test_judge_errors_speak_its_own_flags(run, monkeypatch):
    """Not synth's teacher.* keys, and --a/--b rather than --checkpoint."""
    remote = [
        "--judge-model",
        "m",
        "--base-url",
        "http://judge.invalid/v1",
        "--n",
        "1",
    ]  # not loopback: no probe, no call yet
    proc = cli_here("judge", str(run.path), *remote, "--b", "step-3", check=False)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and out.startswith("error: --b step-3: ") and "--checkpoint" not in out, out
    proc = cli_here("judge", str(run.path), *remote, "--a", "all", check=False)
    assert proc.returncode == 2 and "--a 'all': one model per side: base, last, best or step-N" in proc.stdout
    proc = cli_here("judge", str(run.path), *remote, "--concurrency", "0", check=False)
    assert (
        proc.returncode == 2
        and "error: command line (--concurrency 0): '--concurrency': Input should be greater than or equal to 1 (got 0)"
        in " ".join(proc.stdout.split())
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PHINETUNE_TEACHER_BASE_URL")
    }
    proc = cli_here(
        "judge", str(run.path), "--judge-model", "gpt-4o-mini", env={**env, "PYTHONPATH": str(SRC)}, check=False
    )
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and out == (
        "error: --base-url is the OpenAI API but no key was found; set $OPENAI_API_KEY "
        "(or point --base-url at a local server)"
    )
    with FakeOpenAI() as srv, pytest.raises(TeacherError) as err:  # a base URL without /v1: the server answers 404
        J.judge_run(
            str(run.path),
            TeacherConfig(model="judge", base_url=srv.base_url.removesuffix("/v1"), max_retries=0),
            n=1,
            max_new_tokens=2,
        )
    assert "check --base-url (it should end in /v1) and --judge-model 'judge'" in str(
        err.value
    ) and "teacher." not in str(err.value)
