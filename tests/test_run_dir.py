"""runs/run_dir.py: every name a run folder holds is spelled once, there; a new run needs an empty folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import MERGED_MARKER, RunDir, merged_spec_key, write_merged_marker

SRC = Path(__file__).resolve().parents[1] / "src" / "phinetune"
OWNER = SRC / "runs" / "run_dir.py"
FILE_NAMES = [
    "config.yaml",
    "run.json",
    "metrics.jsonl",
    "loss.png",
    "preflight.json",
    "eval.json",
    "compare.md",
    "samples.json",
    "report.html",
    "report.md",
    "report_plots",
    "mlruns",
    "mlflow_run_id",
    MERGED_MARKER,
    "contamination.json",
    "checkpoint_eval.json",
    "checkpoint_scores.png",
    "compare_checkpoints.md",
    "compare_checkpoints.json",
    "judge.json",
]


def _string_constants(path: Path):
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_every_run_folder_name_is_an_attribute_of_run_dir(tmp_path):
    run = RunDir(tmp_path)
    attrs = {
        getattr(run, a).name
        for a in dir(RunDir)
        if isinstance(getattr(RunDir, a), property) and isinstance(getattr(run, a), Path)
    }
    assert set(FILE_NAMES) - {MERGED_MARKER} <= attrs


def test_no_module_spells_a_run_folder_name_itself():
    found = [
        f"{path.relative_to(SRC)}:{line}: {value!r}"
        for path in SRC.rglob("*.py")
        if path != OWNER
        for line, value in _string_constants(path)
        if any(value == name or value.endswith("/" + name) for name in FILE_NAMES)
    ]
    assert not found, "run-folder names spelled outside runs/run_dir.py:\n" + "\n".join(found)


def test_create_refuses_a_folder_that_is_not_empty(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    Path(cfg.output.dir).mkdir(parents=True)
    (Path(cfg.output.dir) / "notes.txt").write_text("mine")
    with pytest.raises(PhinetuneError, match="is not empty"):
        RunDir.create(cfg)
    assert (Path(cfg.output.dir) / "notes.txt").read_text() == "mine"


def test_create_writes_the_config_into_an_empty_folder(tiny_cfg):
    run = RunDir.create(tiny_cfg())
    assert run.read_config() == tiny_cfg()


def test_merged_marker_round_trip(tmp_path):
    assert merged_spec_key(tmp_path) is None
    write_merged_marker(tmp_path, "phi3-mini", RunDir(tmp_path / "run"))
    assert merged_spec_key(tmp_path) == "phi3-mini"
