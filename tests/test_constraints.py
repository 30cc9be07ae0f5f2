"""scripts/refresh_constraints.py and what it maintains: CI runs the README's test command, which installs the
versions pinned in constraints.txt, each inside pyproject.toml's bounds."""

from __future__ import annotations

import importlib.util

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

spec = importlib.util.spec_from_file_location("refresh_constraints", ROOT / "scripts" / "refresh_constraints.py")
refresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh)


def pinned() -> dict[str, str]:
    return {
        canonicalize_name(name): version for name, version in refresh.parse(refresh.CONSTRAINTS.read_text()).items()
    }


def test_ci_runs_the_readme_test_command_with_the_constraints():
    command = refresh.readme_test_command()
    assert command.startswith("pip install torch==2.13.0 && ") and ' -e ".[dev]" -c constraints.txt ' in command
    assert command.endswith("python -m pytest -q")
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()  # the whole line, as it is


def test_every_dependency_is_bounded_and_pinned_inside_its_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        Requirement(r) for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    ]
    versions = pinned()
    for req in requirements:
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"
        name = canonicalize_name(req.name)
        if name == "llama-cpp-python":  # installed by .ci/llama-cpp-python from its own pinned wheel
            continue
        assert name in versions, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(versions[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={versions[name]} outside {req}"
        )


def test_freeze_lists_the_dependency_closure_without_local_build_labels(tmp_path):
    """`freeze` writes phinetune[dev] and what it needs (its transitive dependencies), not phinetune itself."""
    out = tmp_path / "constraints.txt"
    written = refresh.freeze(out)
    names = {canonicalize_name(n) for n in written}
    assert {
        "transformers",
        "hypothesis-jsonschema",
        "tokenizers",
        "torch",
        "jsonschema",
    } <= names  # direct, and via others
    assert "phinetune" not in names and "+" not in out.read_text()
    assert refresh.parse(out.read_text()) == {n: v.split("+")[0] for n, v in written.items()}
