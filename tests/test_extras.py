"""A verb whose optional dependency is missing says which extra to install, in one sentence, before slow work."""

from __future__ import annotations

import sys

import pytest

from phinetune.errors import PhinetuneError
from phinetune.extras import require


def test_require_names_the_missing_module_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what `import fastapi` sees when it is not installed
    with pytest.raises(PhinetuneError, match=r"^phinetune serve needs fastapi, which is not installed: pip install 'phinetune\[serve\]'$"):
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
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "fastapi" in core and "uvicorn" in core
