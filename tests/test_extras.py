"""A verb whose optional dependency is missing says which extra to install, in one sentence, before slow work."""

from __future__ import annotations

import sys

import pytest

from phinetune.errors import PhinetuneError
from phinetune.extras import require


def test_require_names_the_missing_module_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what `import fastapi` sees when it is not installed
    with pytest.raises(
        PhinetuneError,
        match=r"^phinetune serve needs fastapi, which is not installed: pip install 'phinetune\[serve\]'$",
    ):
        require("phinetune serve", "serve", "fastapi", "json")
    require("phinetune serve", "serve", "json")  # present: nothing to say


def test_serve_without_fastapi_is_a_sentence_not_an_import_error(monkeypatch):
    from phinetune.serve.run import serve

    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "phinetune.serve.app", raising=False)
    with pytest.raises(PhinetuneError, match=r"pip install 'phinetune\[serve\]'"):
        serve("no-model-is-loaded-before-the-check")


def test_bench_train_without_trl_says_so(monkeypatch):
    from phinetune.bench.train import bench_train

    monkeypatch.setitem(sys.modules, "trl", None)
    with pytest.raises(PhinetuneError, match=r"bench train needs trl.*pip install 'phinetune\[bench\]'"):
        bench_train("tiny")


def test_eval_harness_without_lm_eval_says_so(monkeypatch):
    from phinetune.eval import harness

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(PhinetuneError, match=r"pip install 'phinetune\[eval\]'"):
        harness.require_lm_eval()


def test_serving_is_in_the_core_dependencies():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "fastapi" in core and "uvicorn" in core


def test_require_finds_without_importing_and_names_pip_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_ir", None)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(
        PhinetuneError,
        match=r"^x needs onnx-ir and lm-eval, which are not installed: pip install 'phinetune\[e\]'; or y$",
    ):
        require("x", "e", "json", "onnx_ir", "lm_eval", instead="; or y")
    monkeypatch.delitem(sys.modules, "tomllib", raising=False)
    require("x", "e", "tomllib")
    assert "tomllib" not in sys.modules  # found, not imported (importing mlflow or deepspeed takes seconds)


def test_a_deepspeed_config_without_deepspeed_says_so(monkeypatch):
    from pathlib import Path

    from phinetune.train.distributed.launch import launch_command

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "deepspeed-zero2.yaml"
    with pytest.raises(
        PhinetuneError,
        match=r"\(DeepSpeed\) needs deepspeed, which is not installed: pip install 'phinetune\[deepspeed\]'",
    ):
        launch_command(2, ["c.yaml"], config, use_gpu=False)


# Imports that may fail for reasons other than a missing extra: each says why.
NOT_AN_EXTRA = {
    "runs/status.py": "fcntl: the platform (not POSIX)",
    "export/hub.py": "httpx or its successor httpx2: whichever huggingface_hub brought",
    "train/objectives/rewards.py": "the user's own reward function, named by a dotted path",
}


def test_only_extras_checks_whether_a_package_is_installed():
    """One way to ask: no other find_spec, `except ImportError` or `pip install 'phinetune[...]'` sentence in src/
    (the CLI's help may name an extra)."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "phinetune"
    found = []
    for path in sorted(src.rglob("*.py")):
        name = str(path.relative_to(src))
        if name == "extras.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "find_spec":
                found.append(f"{name}:{node.lineno} find_spec")
            elif (
                isinstance(node, ast.ExceptHandler)
                and "ImportError" in ast.unparse(node.type or ast.Name(""))
                and name not in NOT_AN_EXTRA
            ):
                found.append(f"{name}:{node.lineno} except ImportError")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "pip install" in node.value
                and id(node) not in docstrings
                and not name.startswith("cli")
            ):
                found.append(f"{name}:{node.lineno} an install hint")
    assert not found, "use phinetune.extras.require / installed:\n" + "\n".join(found)
