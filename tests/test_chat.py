"""infer/chat.py: the chat commands are answered in the terminal and never sent to the model; Ctrl-C (a real SIGINT)
in the middle of a streamed reply stops the reply and comes back to the prompt, again and again; the process then ends
normally. It used to end the process, and 2 times in 4 abort it ("terminate called without an active exception",
exit 134) while the generating thread was still inside torch."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import SRC, cli_here
from phinetune.infer import chat
from phinetune.infer.chat import COMMANDS, chat_loop
from phinetune.models.specs import SPECS

STOPPED = "(reply stopped)"


class Chat:
    def __init__(self, env: dict):
        # Greedy on the random-weight tiny base: a long reply that never reaches an end-of-turn token, the same every time.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phinetune", "chat", "tiny-phi3", "--max-new-tokens", "4000", "--temperature", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.out = ""

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_until(self, done, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.out):
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise AssertionError(
                    f"chat stopped answering (exit {self.proc.poll()}); output so far:\n{self.out[-2000:]}\n"
                    f"{self.proc.stderr.read().decode(errors='replace')[-2000:] if self.proc.poll() is not None else ''}"
                )
            self.out += chunk.decode(errors="replace")


@pytest.mark.slow
def test_ctrl_c_mid_reply_returns_to_the_prompt_every_time(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "HF_HUB_OFFLINE": "1",
        "PHINETUNE_QUIET": "1",
        "PHINETUNE_CACHE": str(tmp_path / "cache"),
    }
    chat = Chat(env)
    try:
        for turn in range(5):
            chat.send(f"Tell me a long story, part {turn}.")
            start = chat.out.count("phi>")
            # mid-reply: this turn's reply has started and printed some text
            chat.read_until(lambda out: out.count("phi>") > start and len(out.rsplit("phi>", 1)[1]) > 40)
            chat.proc.send_signal(signal.SIGINT)
            chat.read_until(lambda out: out.count(STOPPED) > turn and out.rstrip().endswith("you>"))
            assert chat.proc.poll() is None, f"Ctrl-C ended the chat (exit {chat.proc.returncode})"
        chat.send("/exit")
        out, err = chat.proc.communicate(timeout=120)
    finally:
        if chat.proc.poll() is None:
            chat.proc.kill()
            chat.proc.wait()
    err = err.decode(errors="replace")
    assert chat.proc.returncode == 0, err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err, err[-2000:]
    assert chat.out.count(STOPPED) == 5


def test_help_lists_every_command_and_an_unknown_command_is_answered_not_sent(capsys):
    typed = iter(["/help", "/hlep", "/RESET", "/exit"])
    chat_loop(None, None, read=lambda prompt: next(typed))  # loaded=None: anything sent to the model would fail
    out = capsys.readouterr().out
    for name, what in COMMANDS.items():
        assert f"{name:<7} {what}" in out
    assert "unknown command /hlep: not sent to the model; the commands are /help, /reset, /exit" in " ".join(
        out.split()
    )
    assert "conversation cleared" in out  # commands are read without case
    assert "phi>" not in out


def test_a_double_slash_sends_the_message_with_one_slash(monkeypatch, capsys):
    sent = []

    def fake_stream(loaded, history, sampling):
        sent.append([dict(m) for m in history])
        yield "ok"

    monkeypatch.setattr(chat, "stream_reply", fake_stream)
    typed = iter(["//etc/hosts: what is it?", "/exit"])
    chat_loop(SimpleNamespace(spec=SPECS["phi3-mini-4k"]), None, read=lambda prompt: next(typed))
    assert sent == [[{"role": "user", "content": "/etc/hosts: what is it?"}]]


@pytest.mark.slow
def test_chat_answers_help_end_to_end():
    """Through the verb on the built-in tiny model: /help and an unknown command are answered, nothing is generated."""
    proc = cli_here("chat", "tiny-phi3", "--max-new-tokens", "2", stdin="/help\n/nope\n/exit\n")
    out = " ".join(proc.stdout.split())
    assert "/reset clear the conversation" in out and "unknown command /nope" in out and "phi>" not in out
