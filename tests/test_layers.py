"""Imports go down the layers, never up, and never round in a circle (docs/architecture.md).

Every module's imports are read from its source, wherever they are written: at the top, inside a function (lazy),
under `if TYPE_CHECKING:`, and by name (a string that names a phinetune module: importlib.import_module,
__import__, importlib.resources, or a registry of module names). Two rules:

1. A package may import from its own folder and from any lower layer; packages on the same layer do not import
   each other.
2. No module reaches itself again through its imports, inside a folder or across folders. A lazy import that
   closes a circle still makes one: it only hides it, and which names exist then depends on the order in which
   modules happen to load.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "phinetune"

LAYERS = [
    {
        "errors",
        "paths",
        "progress",
        "markdown",
        "charts",
        "assets",
        "templates",
        "__init__",
    },  # no phinetune imports but each other
    {"config", "extras"},  # extras: which optional dependency a verb needs
    {"kernels"},  # CPU kernels and the allocator: torch and peft only; models/ and train/ install them
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

# A string that is a module's dotted name, alone or with a `:attribute` (the form registries and entry points use).
MODULE_NAME = re.compile(r"(phinetune(?:\.[A-Za-z_]\w*)+)(?::\w+)?")


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("phinetune", *parts))


def modules(root: Path = SRC) -> dict[str, Path]:
    """Every module and package of the tree by dotted name (a package is its __init__.py)."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(path: Path, root: Path = SRC, known: dict[str, Path] | None = None) -> list[tuple[int, str]]:
    """(line, module) for every phinetune module `path` imports, by statement or by name.

    `from phinetune.train import recipe` imports the submodule phinetune.train.recipe; a name that is not a module
    of the tree is kept as written (an import statement) or ignored (a string that merely looks like one)."""
    known = modules(root) if known is None else known
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in known]
            found += [(node.lineno, s) for s in subs] or [(node.lineno, name)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            named = MODULE_NAME.fullmatch(node.value.strip())
            if named and named.group(1) in known:
                found.append((node.lineno, named.group(1)))
    return [(line, name) for line, name in found if name == "phinetune" or name.startswith("phinetune.")]


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__")} | {
        p.stem for p in SRC.glob("*.py")
    }
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to LAYERS (and to docs/architecture.md)"


def violations(root: Path = SRC) -> list[str]:
    wrong = []
    known = modules(root)
    for path in known.values():
        mine = package_of(module_name(path, root))
        for line, name in imports(path, root, known):
            theirs = package_of(name)
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                wrong.append(
                    f"{path.relative_to(root)}:{line} ({mine}, layer {RANK[mine]}) imports {name} (layer {RANK[theirs]})"
                )
    return wrong


def graph(root: Path = SRC) -> dict[str, dict[str, int]]:
    """module -> {module it imports: the first line that does}, over the tree's own modules only."""
    known = modules(root)
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        out = edges.setdefault(name, {})
        for line, target in sorted(imports(path, root, known)):
            if target in known and target != name:
                out.setdefault(target, line)
    return edges


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that each reach one another (a circle has two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [g for g in groups if len(g) > 1]


def shortest_circle(edges: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group (breadth first)."""
    start, inside = group[0], set(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w in inside and w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    return group


def circles(root: Path = SRC) -> list[str]:
    """Each circle as `a.py:LINE -> b.py:LINE -> a.py`, LINE being where the module imports the next one."""
    edges, known = graph(root), modules(root)
    where = lambda m: str(known[m].relative_to(root))  # noqa: E731
    out = []
    for group in strongly_connected(edges):
        path = shortest_circle(edges, group)
        hops = [f"{where(a)}:{edges[a][b]}" for a, b in zip(path, path[1:])]
        size = f" (one of {len(group)} modules that reach each other)" if len(group) > len(path) - 1 else ""
        out.append(" -> ".join([*hops, where(path[-1])]) + size)
    return sorted(out)


def test_no_module_imports_upward_or_sideways():
    wrong = violations()
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circles():
    found = circles()
    assert not found, "import circles (move the shared part into a module both can import):\n" + "\n".join(found)


def test_the_checker_sees_upward_sideways_and_relative_imports(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "runs" / "a.py").write_text("def f():\n    from phinetune.train.recipe import train\n")
    (tmp_path / "runs" / "b.py").write_text(
        "from . import a\nfrom ..infer import complete\nfrom phinetune.models import specs\n"
    )
    (tmp_path / "eval" / "c.py").write_text("import phinetune.report.page\nfrom phinetune.runs.loading import Loaded\n")
    assert violations(tmp_path) == [
        "eval/c.py:1 (eval, layer 8) imports phinetune.report.page (layer 8)",
        "runs/a.py:2 (runs, layer 5) imports phinetune.train.recipe (layer 7)",
        "runs/b.py:2 (runs, layer 5) imports phinetune.infer (layer 6)",
    ]


def test_the_checker_sees_circles_hidden_in_functions_type_checking_and_names(tmp_path):
    for folder in ("data", "serve", "train", "runs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    # lazy, both ways through `from package import module`
    (tmp_path / "data" / "cache.py").write_text("def f():\n    from phinetune.data import dataset\n")
    (tmp_path / "data" / "dataset.py").write_text("from .cache import f\n")
    # only under TYPE_CHECKING, over three modules
    (tmp_path / "train" / "recipe.py").write_text("from phinetune.train.checkpoint import save\n")
    (tmp_path / "train" / "checkpoint.py").write_text("import phinetune.train.elastic\n")
    (tmp_path / "train" / "elastic.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from phinetune.train.recipe import Loop\n"
    )
    # by name: a registry string and importlib
    (tmp_path / "serve" / "run.py").write_text("TABLE = {'app': 'phinetune.serve.app:create_app'}\n")
    (tmp_path / "serve" / "app.py").write_text(
        "import importlib\n\n\ndef f():\n    importlib.import_module('phinetune.serve.run')\n"
    )
    # not circles: a one-way import, a profiler scope that names no module, a sentence that mentions one
    (tmp_path / "runs" / "a.py").write_text("from phinetune.runs import b\nSCOPE = 'phinetune.optimizer'\n")
    (tmp_path / "runs" / "b.py").write_text("HELP = 'pass phinetune.runs.a to it'\n")
    assert circles(tmp_path) == [
        "data/cache.py:2 -> data/dataset.py:1 -> data/cache.py",
        "serve/app.py:5 -> serve/run.py:1 -> serve/app.py",
        "train/checkpoint.py:1 -> train/elastic.py:3 -> train/recipe.py:1 -> train/checkpoint.py",
    ]
