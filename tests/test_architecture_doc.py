"""docs/architecture.md says what the package is, and stays true.

Its tree lists every folder and module of src/phinetune, in `ls` order, each with a line of purpose, and nothing
that is gone; its layer table says what tests/test_layers.py's LAYERS says (LAYERS is the source of truth: the
import checker reads it). The doc is read as a reader sees it: the tree drawn with ├── └── │, the table's rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_layers import LAYERS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SRC = ROOT / "src" / "phinetune"
TREE_ROOT = "src/phinetune/"

# One tree line: the guides of the folders above (4 characters a level), a branch, the name, then what it is for.
TREE_LINE = re.compile(r"^(?P<guides>(?:│   |    )*)(?:├── |└── )(?P<name>\S+)(?:\s+(?P<purpose>\S.*))?$")
LAYER_ROW = re.compile(r"^\|\s*(?P<layer>\d+)\s*\|(?P<names>[^|]*)\|")


def package_entries(root: Path = SRC) -> set[str]:
    """Every folder (`name/`) and Python module under `root`, as paths relative to it; caches and hidden ones aside."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        if path.is_dir():
            found.add(f"{rel.as_posix()}/")
        elif path.suffix == ".py":
            found.add(rel.as_posix())
    return found


def tree_block(text: str) -> list[str]:
    """The lines of the fenced block that draws the package, the root line left out."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    trees = [b.splitlines() for b in blocks if b.startswith(TREE_ROOT + "\n")]
    assert len(trees) == 1, f"docs/architecture.md needs one code block that starts with the line {TREE_ROOT}"
    return trees[0][1:]


def tree_entries(text: str) -> list[tuple[str, str]]:
    """(path relative to the package, purpose) for every line of the tree, in the order the doc lists them."""
    entries: list[tuple[str, str]] = []
    folders: list[str] = []  # the folder open at each depth
    for number, line in enumerate(tree_block(text), start=2):
        m = TREE_LINE.match(line)
        assert m, f"tree line {number} is not drawn as `├── name  purpose` under its folder's guides: {line!r}"
        depth = len(m["guides"]) // 4
        assert depth <= len(folders), f"tree line {number} ({m['name']}) is deeper than a folder above it: {line!r}"
        folders = folders[:depth]
        path = "".join(folders) + m["name"]
        entries.append((path, m["purpose"] or ""))
        if m["name"].endswith("/"):
            folders.append(m["name"])
    return entries


def tree_problems(text: str, root: Path = SRC) -> list[str]:
    """What the tree gets wrong about `root`, one sentence each (none: it matches)."""
    listed = tree_entries(text)
    paths = [p for p, _ in listed]
    actual = package_entries(root)
    problems = [f"{p} is in src/phinetune but not in the tree" for p in sorted(actual - set(paths))]
    problems += [f"{p} is in the tree but not in src/phinetune" for p in sorted(set(paths) - actual)]
    problems += [f"{p} is listed twice" for p in sorted({p for p in paths if paths.count(p) > 1})]
    problems += [f"{p} has no line of purpose" for p, purpose in listed if not purpose]
    by_folder: dict[str, list[str]] = {}
    for p in paths:
        parent, _, name = p.rstrip("/").rpartition("/")
        by_folder.setdefault(parent, []).append(name)
    problems += [
        f"{folder or TREE_ROOT} lists {names}, not in ls order {sorted(names)}"
        for folder, names in by_folder.items()
        if names != sorted(names)
    ]
    return problems


def table_layers(text: str) -> dict[int, set[str]]:
    """Layer -> the folders and top-level modules its row of the table names (`cli/` -> cli, `errors.py` -> errors)."""
    rows: dict[int, set[str]] = {}
    for line in text.splitlines():
        m = LAYER_ROW.match(line)
        if m:
            layer = int(m["layer"])
            assert layer not in rows, f"docs/architecture.md has two rows for layer {layer}"
            rows[layer] = {re.sub(r"(/|\.py)$", "", n) for n in re.findall(r"`([^`]+)`", m["names"])}
    return rows


def layer_problems(text: str, layers: list[set[str]] = LAYERS) -> list[str]:
    rows, expected = table_layers(text), dict(enumerate(layers))
    problems = []
    for layer in sorted(set(rows) | set(expected)):
        doc, test = rows.get(layer, set()), expected.get(layer, set())
        if doc != test:
            problems.append(
                f"layer {layer}: the doc's table names {sorted(doc)}, tests/test_layers.py LAYERS {sorted(test)}"
            )
    return problems


def test_the_tree_lists_every_folder_and_module_and_nothing_that_is_gone():
    problems = tree_problems(DOC.read_text())
    assert not problems, "docs/architecture.md's package tree:\n" + "\n".join(problems)


def test_the_layer_table_says_what_test_layers_says():
    problems = layer_problems(DOC.read_text())
    assert not problems, "docs/architecture.md's layer table:\n" + "\n".join(problems)


# ------------------------------------------------ the checkers see what they are for, on a package made here

FAKE_DOC = """\
| layer | folders and modules | what it owns |
|---|---|---|
| 1 | `train/` | training |
| 0 | `errors.py`, `__init__.py` | errors |

```
src/phinetune/
├── __init__.py         the version
├── errors.py           errors
└── train/              training
    ├── __init__.py     (empty)
    ├── objectives/     one module per objective
    │   └── sft.py      SFT
    └── recipe.py       the recipe
```
"""


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    for rel in ("__init__.py", "errors.py", "train/__init__.py", "train/recipe.py", "train/objectives/sft.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "train" / "__pycache__").mkdir()
    (tmp_path / "train" / "__pycache__" / "recipe.cpython-311.pyc").write_text("")
    (tmp_path / "train" / "objectives" / "notes.txt").write_text("data files are named on their folder's line")
    return tmp_path


def test_the_tree_is_read_as_drawn(fake_package):
    assert tree_entries(FAKE_DOC) == [
        ("__init__.py", "the version"),
        ("errors.py", "errors"),
        ("train/", "training"),
        ("train/__init__.py", "(empty)"),
        ("train/objectives/", "one module per objective"),
        ("train/objectives/sft.py", "SFT"),
        ("train/recipe.py", "the recipe"),
    ]
    assert tree_problems(FAKE_DOC, fake_package) == []


def test_a_new_module_a_gone_one_a_move_and_a_bad_order_are_each_named(fake_package):
    (fake_package / "train" / "loop.py").write_text("")  # new, not in the doc
    (fake_package / "train" / "recipe.py").unlink()  # gone, still in the doc
    (fake_package / "kernels").mkdir()  # a new folder
    moved = FAKE_DOC.replace("    │   └── sft.py      SFT\n", "").replace(
        "├── errors.py           errors\n", "├── errors.py           errors\n├── sft.py              SFT\n"
    )
    reordered = FAKE_DOC.replace("├── __init__.py         the version\n", "").replace(
        "└── train/", "├── __init__.py         the version\n└── train/"
    )
    assert tree_problems(FAKE_DOC, fake_package) == [
        "kernels/ is in src/phinetune but not in the tree",
        "train/loop.py is in src/phinetune but not in the tree",
        "train/recipe.py is in the tree but not in src/phinetune",
    ]
    assert "train/objectives/sft.py is in src/phinetune but not in the tree" in tree_problems(moved, fake_package)
    assert "sft.py is in the tree but not in src/phinetune" in tree_problems(moved, fake_package)
    assert tree_problems(reordered, fake_package)[-1] == (
        "src/phinetune/ lists ['errors.py', '__init__.py', 'train'], not in ls order "
        "['__init__.py', 'errors.py', 'train']"
    )


def test_a_line_without_purpose_or_drawn_off_its_folder_is_refused(fake_package):
    bare = FAKE_DOC.replace("├── errors.py           errors", "├── errors.py")
    assert tree_problems(bare, fake_package) == ["errors.py has no line of purpose"]
    with pytest.raises(AssertionError, match="deeper than a folder above it"):
        tree_entries(FAKE_DOC.replace("├── errors.py ", "│   ├── errors.py "))
    with pytest.raises(AssertionError, match="not drawn as"):
        tree_entries(FAKE_DOC.replace("├── errors.py ", "- errors.py "))


def test_a_layer_row_that_disagrees_with_layers_is_named():
    assert layer_problems(FAKE_DOC, [{"errors", "__init__"}, {"train"}]) == []
    assert layer_problems(FAKE_DOC, [{"errors", "__init__"}, {"train", "teachers"}]) == [
        "layer 1: the doc's table names ['train'], tests/test_layers.py LAYERS ['teachers', 'train']"
    ]
    assert layer_problems(FAKE_DOC, [{"errors", "__init__"}, {"kernels"}, {"train"}]) == [
        "layer 1: the doc's table names ['train'], tests/test_layers.py LAYERS ['kernels']",
        "layer 2: the doc's table names [], tests/test_layers.py LAYERS ['train']",
    ]
