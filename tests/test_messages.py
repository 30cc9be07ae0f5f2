"""Square brackets survive every message and every help text (rich markup would read `[serve]` or
`[qkv_proj, o_proj]` as style tags and drop them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import typer.main
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from phinetune.cli import app, print_error
from phinetune.progress import console

SRC = Path(__file__).resolve().parents[1] / "src" / "phinetune"


def squeeze(text: str) -> str:
    return "".join(text.split())


def commands(group: click.Command, path: tuple[str, ...] = ()):
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, path + (name,))


def test_every_help_text_keeps_its_brackets():
    root = typer.main.get_command(app)
    checked = 0
    for path, command in commands(root):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        shown = squeeze(CliRunner().invoke(app, [*path, "--help"]).output)
        for text in texts:
            for bracketed in re.findall(r"\S*\[[^\]]*\]\S*", text):
                checked += 1
                assert squeeze(bracketed.rstrip(".,;)")) in shown, (
                    f"phinetune {' '.join(path)} --help lost {bracketed!r}"
                )
    assert checked >= 2  # at least generate --input's {"messages": [...]} and eval --harness's phinetune[eval]


def test_eval_help_names_the_extra_and_where_official_files_come_from():
    shown = " ".join(CliRunner().invoke(app, ["eval", "--help"]).output.split())
    assert "pip install 'phinetune[eval]'" in shown and "allenai/ai2_arc" in shown and "docs/eval.md" in shown


@given(st.text(alphabet="[]/ab =-'\",:|", max_size=80))
def test_error_printer_shows_any_message_verbatim(message):
    with console.capture() as captured:
        print_error(message)
    assert squeeze(message) in squeeze(captured.get())


def test_real_messages_keep_their_lists():
    for message in [
        "the real targets are modules [qkv_proj, o_proj, gate_up_proj, down_proj] (presets: attention)",
        "phinetune serve needs fastapi, which is not installed: pip install 'phinetune[serve]'",
        "data source 'x' could not be loaded (split 'train[:10]'): [Errno 2] No such file",
    ]:
        with console.capture() as captured:
            print_error(message)
        assert squeeze(message) in squeeze(captured.get())


def _is_escape(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "escape"


def _unescaped(node: ast.AST) -> list[str]:
    """f-string parts of a styled print that could carry markup: not escape()d, not a number format, not a constant choice."""
    if _is_escape(node) or (isinstance(node, ast.FormattedValue) and _is_escape(node.value)):
        return []
    found = []
    if isinstance(node, ast.FormattedValue):
        constant_choice = isinstance(node.value, ast.IfExp) and all(
            isinstance(b, ast.Constant) for b in (node.value.body, node.value.orelse)
        )
        if node.format_spec is None and not constant_choice:
            found.append(ast.unparse(node.value))
    for child in ast.iter_child_nodes(node):
        found += _unescaped(child)
    return found


def test_every_styled_print_escapes_its_dynamic_text():
    """The console has markup off; a print that turns it on must escape() whatever it interpolates."""
    offenders = []
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and any(
                k.arg == "markup" and getattr(k.value, "value", None) is True for k in node.keywords
            ):
                offenders += [
                    f"{file.relative_to(SRC)}:{node.lineno}: {part}" for arg in node.args for part in _unescaped(arg)
                ]
    assert not offenders, offenders
