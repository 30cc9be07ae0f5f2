"""infer/chat.py: the chat commands are answered in the terminal and never sent to the model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import cli_here
from phinetune.infer import chat
from phinetune.infer.chat import COMMANDS, chat_loop
from phinetune.models.specs import SPECS


def test_help_lists_every_command_and_an_unknown_command_is_answered_not_sent(capsys):
    typed = iter(["/help", "/hlep", "/RESET", "/exit"])
    chat_loop(None, None, read=lambda prompt: next(typed))  # loaded=None: anything sent to the model would fail
    out = capsys.readouterr().out
    for name, what in COMMANDS.items():
        assert f"{name:<7} {what}" in out
    assert "unknown command /hlep: not sent to the model; the commands are /help, /reset, /exit" in " ".join(out.split())
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
