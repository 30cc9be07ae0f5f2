"""cli/: every verb's --help works, and an option that several verbs take is declared once (cli/options.py), with
one default; choices are the command line's own (its one-line error), and comma lists have one reader."""

from __future__ import annotations

import ast
import typing
from collections import defaultdict
from pathlib import Path

import pytest
import typer
import typer.main
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from phinetune.cli import app, options
from phinetune.infer.sampling import Sampling
from phinetune.models.load_options import DTYPE_ALIASES, LoadOptions

CLI = Path(__file__).resolve().parents[1] / "src" / "phinetune" / "cli"
SHARED = (
    "--dtype",
    "--quant",
    "--checkpoint",
    "--checkpoints",
    "--max-new-tokens",
    "--temperature",
    "--top-k",
    "--top-p",
    "--seed",
    "--config",
    "--prompts",
)


def commands(group, path: tuple[str, ...] = ()):
    for name, sub in getattr(group, "commands", {}).items():
        yield (path + (name,)), sub
        yield from commands(sub, path + (name,))


ROOT = typer.main.get_command(app)
VERBS = [path for path, _ in commands(ROOT)]


@pytest.mark.parametrize("path", VERBS, ids=[" ".join(p) for p in VERBS])
def test_every_verb_has_a_help(path):
    shown = CliRunner().invoke(app, [*path, "--help"], prog_name="phinetune")
    assert shown.exit_code == 0 and f"Usage: phinetune {' '.join(path)}" in " ".join(shown.output.split()), shown.output


def test_every_verb_is_registered():
    assert {" ".join(p) for p in VERBS} == {
        "train",
        "check",
        "launch-template",
        "generate",
        "chat",
        "compare",
        "eval",
        "judge",
        "report",
        "merge",
        "export",
        "push",
        "serve",
        "synth",
        "inspect",
        "plan",
        "data",
        "data inspect",
        "bench",
        "bench infer",
        "bench serve",
        "bench train",
    }


def test_shared_options_are_spelled_only_in_the_options_module():
    """A verb module that wrote `typer.Option(..., "--dtype")` itself would have a second definition."""
    for module in CLI.glob("*.py"):
        if module.name == "options.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("typer.Option", "typer.Argument"):
                spelled = [a.value for a in node.args if isinstance(a, ast.Constant) and a.value in SHARED]
                assert not spelled, f"{module.name}:{node.lineno} declares {spelled}: take them from cli/options.py"


def test_no_verb_declares_a_shared_option_by_its_parameter_name():
    """typer names an option after its parameter (`max_new_tokens` is --max-new-tokens): such a parameter must be
    annotated with the options module's type, not given a typer.Option of its own."""
    for module in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef) and module.name != "options.py":
                args = node.args.args
                defaults = dict(zip([a.arg for a in args[len(args) - len(node.args.defaults) :]], node.args.defaults))
                for arg in args:
                    if "--" + arg.arg.replace("_", "-") in SHARED:
                        declared = defaults.get(arg.arg)
                        own = isinstance(declared, ast.Call) and ast.unparse(declared.func).startswith("typer.")
                        assert not own, f"{module.name}: {node.name}({arg.arg}) declares its own option"


def declarations() -> dict[str, set[str]]:
    """--flag -> the help texts cli/options.py declares it with."""
    found = defaultdict(set)
    for value in vars(options).values():
        if typing.get_origin(value) is typing.Annotated:
            info = value.__metadata__[0]  # in Annotated, typer reads the first name given as `default`
            for flag in [info.default, *(info.param_decls or ())]:
                if isinstance(flag, str) and flag.startswith("--"):
                    found[flag].add(info.help)
    return found


def test_every_shared_option_is_one_of_the_declared_ones_with_one_default():
    declared = declarations()
    assert set(SHARED) <= set(declared)
    defaults = defaultdict(set)
    for path, command in commands(ROOT):
        for param in getattr(command, "params", []):
            for flag in set(param.opts) & set(SHARED):
                assert param.help in declared[flag], f"phinetune {' '.join(path)} {flag}: not cli/options.py's"
                defaults[(flag, param.help)].add(repr(param.default))
    several = {key[0]: values for key, values in defaults.items() if len(values) > 1}
    assert not several, f"one option, several defaults: {several}"


def help_of(alias) -> str:
    return alias.__metadata__[0].help


def test_the_defaults_are_the_librarys():
    """The sampling and loading options default to what Sampling() and LoadOptions() do when nobody passes them."""
    library = {
        help_of(options.DType): LoadOptions().dtype,
        help_of(options.Quant): LoadOptions().quant,
        **{
            help_of(alias): getattr(Sampling(), name)
            for name, alias in [
                ("max_new_tokens", options.MaxNewTokens),
                ("temperature", options.Temperature),
                ("top_k", options.TopK),
                ("top_p", options.TopP),
                ("seed", options.Seed),
            ]
        },
    }
    checked = 0
    for path, command in commands(ROOT):
        for param in getattr(command, "params", []):
            if param.help in library:
                checked += 1
                assert param.default == library[param.help], f"phinetune {' '.join(path)} {param.opts[0]}"
    assert checked >= 20  # generate, chat, compare: 7-8 each; serve, merge, judge


@pytest.mark.parametrize("spelling", ["auto", "bf16", "BF16", "fp16", "fp32", *DTYPE_ALIASES])
def test_every_dtype_spelling_is_a_choice(spelling):
    """Parsed by the command line itself, without running the verb: each spelling reaches the library in its own
    name."""
    command = ROOT.commands["generate"]
    params = command.make_context("generate", ["run", "--dtype", spelling]).params
    assert params["dtype"] == spelling.lower()


def test_a_wrong_choice_is_the_command_lines_one_line_error():
    proc = CliRunner().invoke(app, ["generate", "run", "hi", "--quant", "int3"])
    said = " ".join(proc.output.split())
    assert (
        proc.exit_code == 2 and "Invalid value for '--quant'" in said and "'int3' is not one of 'none', 'nf4'" in said
    )
    assert "none|nf4" in " ".join(CliRunner().invoke(app, ["generate", "--help"]).output.split())  # the choices, listed


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=6), st.sampled_from([",", ", ", " ,"]))
def test_a_comma_list_reads_what_was_joined(values, sep):
    assert options.comma_list(int)(sep.join(map(str, values)) + ",") == tuple(values)


@pytest.mark.parametrize("text", ["", ",", "1,x", "a"])
def test_a_comma_list_that_is_no_list_of_integers_is_refused(text):
    with pytest.raises(typer.BadParameter, match=f"{text!r} is not a comma-separated list of integers like 1,8"):
        options.comma_list(int, "1,8")(text)
