"""Imports go down the layers, never up (docs/architecture.md): read every module's imports and check them.

A package may import from its own folder and from any lower layer; packages on the same layer do not import
each other. Lazy imports inside functions count too: an upward import hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "phinetune"

LAYERS = [
    {"errors", "paths", "progress", "markdown", "charts", "assets", "templates", "__init__"},  # no phinetune imports but each other
    {"config", "extras"},  # extras: which optional dependency a verb needs
    {"models"},
    {"data"},
    {"runs"},  # the run folder: names, loading base and tuned, held-out prompts
    {"infer"},
    {"train", "teachers"},  # teachers: the models synth and judge ask (an endpoint or a local model), and their journal
    {"eval", "report", "serve", "synth"},
    {"export"},  # the model card reuses the report's sections
    {"bench"},
    {"cli"},
    {"__main__"},
]
RANK = {pkg: k for k, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    me = "phinetune." + ".".join(path.relative_to(root).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module
                base = me.rsplit(".", node.level)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "phinetune" or name.startswith("phinetune.")]


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__")} | {p.stem for p in SRC.glob("*.py")}
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to LAYERS (and to docs/architecture.md)"


def violations(root: Path = SRC) -> list[str]:
    wrong = []
    for path in sorted(root.rglob("*.py")):
        mine = package_of("phinetune." + ".".join(path.relative_to(root).with_suffix("").parts))
        for line, name in imports(path, root):
            theirs = package_of(name)
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(root)}:{line} ({mine}, layer {RANK[mine]}) imports {name} (layer {RANK[theirs]})")
    return wrong


def test_no_module_imports_upward_or_sideways():
    wrong = violations()
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_checker_sees_upward_sideways_and_relative_imports(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "runs" / "a.py").write_text("def f():\n    from phinetune.train.recipe import train\n")
    (tmp_path / "runs" / "b.py").write_text("from . import a\nfrom ..infer import complete\nfrom phinetune.models import specs\n")
    (tmp_path / "eval" / "c.py").write_text("import phinetune.report.page\nfrom phinetune.runs.loading import Loaded\n")
    assert violations(tmp_path) == [
        "eval/c.py:1 (eval, layer 7) imports phinetune.report.page (layer 7)",
        "runs/a.py:2 (runs, layer 4) imports phinetune.train.recipe (layer 6)",
        "runs/b.py:2 (runs, layer 4) imports phinetune.infer (layer 5)"]
