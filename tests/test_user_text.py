"""The text users read speaks of their task only: no tutorials the project grew from ("the seeds' recipe"), no
issue numbers, no session names, no ids of the tools that looked facts up.

Scanned: the --help of every verb, docs/*.md, README.md, the shipped configs and default config, and every string
literal and comment in src/ (messages, help text, docstrings: what reaches users and what they read in the code).
Random seeds and synth's seed questions are the user's own words and stay: only the insider phrases are matched.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "phinetune"

INSIDER = {
    "a tutorial named as 'the seed(s)'": re.compile(
        r"\bseeds?['’]s?\s|\bseed\s+(tutorials?|recipes?)\b|\b(Phi-[\w.]+|Phinetuning\s+[\d.]+)\s+seed\b"
        r"|\bthe\s+seeds\s+(report|say|use|do|got|missed)\b",
        re.I,
    ),
    "an issue number": re.compile(r"\bissues?\s*#?\d+|\bthe\s+issue['’]s\b|\bissue\s+note\b", re.I),
    "a session name": re.compile(r"\(s\d{1,2}[a-z]\)|\bsession\s+s\d{1,2}[a-z]\b"),
    "a lookup tool's id": re.compile(r"\b(find_string|find_files|read_file)\b|\bsearch index\b|\bid\s+\d{9,}\b", re.I),
}


def insider_phrases(text: str) -> list[str]:
    return [f"{what}: {m.group(0)!r}" for what, pattern in INSIDER.items() for m in pattern.finditer(text)]


def help_pages() -> dict[str, str]:
    """`phinetune ... --help` of the command, every group and every verb, as a user sees them."""
    import typer
    from typer.testing import CliRunner

    from phinetune.cli import app

    pages, runner = {}, CliRunner()

    def walk(command, path: list[str]) -> None:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, (path, result.output)
        pages[" ".join(["phinetune", *path])] = result.output
        for name, sub in getattr(command, "commands", {}).items():  # a group: its verbs
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return pages


def source_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal and comment of a Python file."""
    source = path.read_text()
    found = [
        (n.lineno, n.value)
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    found += [
        (t.start[0], t.string)
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    ]
    return found


def test_help_of_every_verb():
    pages = help_pages()
    assert {"phinetune", "phinetune train", "phinetune bench train", "phinetune data inspect"} <= set(pages)
    found = [f"{page}: {hit}" for page, text in pages.items() for hit in insider_phrases(" ".join(text.split()))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("pattern", ["docs/*.md", "README.md", "configs/**/*.yaml", "src/phinetune/assets/*.yaml"])
def test_docs_and_shipped_configs(pattern):
    files = sorted(ROOT.glob(pattern))
    assert files
    found = [f"{f.relative_to(ROOT)}: {hit}" for f in files for hit in insider_phrases(" ".join(f.read_text().split()))]
    assert not found, "\n".join(found)


def test_strings_and_comments_in_src():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {hit}"
        for path in sorted(SRC.rglob("*.py"))
        for line, text in source_texts(path)
        for hit in insider_phrases(text)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "training against the seeds' recipe",
        "the Phi-2 seed's modules_to_save",
        "the seed tutorials got wrong",
        "in the Phinetuning 2.0 seed, eval loss rose",
        "the seeds report NaN losses",
        "measured (issue 20)",
        "(issue 19's interface)",
        "the issue's GPU targets",
        "after merging the LoRA (s20e)",
        "(find_string id 58333996503)",
        "the search index's file 58333996503",
    ],
)
def test_the_phrases_that_were_there_are_caught(text):
    assert insider_phrases(text)


@pytest.mark.parametrize(
    "text",
    [
        "random seed 0",
        "train.seed 1, 2, 3",
        "grows seed questions into conversations",
        "the 386-riddle seed list",
        "against the seeds and every question kept",
        "keep_seeds also keeps the seeds",
        "seeds.path=riddles.csv",
        "Without an expand stage the seeds themselves are the questions",
        "the same seed gives the same answer",
        "a known issue",
        "model.aibase.com/en/models/details/1924737630994698240",
    ],
)
def test_the_users_own_seeds_are_not_caught(text):
    assert not insider_phrases(text)
