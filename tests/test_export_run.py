"""`phinetune export` end to end, and its refusals: one sentence, exit code 2, nothing left behind."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import cli_here


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


@pytest.mark.slow
def test_export_gguf_and_ollama_through_the_cli(tiny_run, tmp_path):
    proc = cli_here("export", str(tiny_run), "--to", "ollama", "--quant", "q8_0", "--out", str(tmp_path / "ollama"))
    files = sorted(p.name for p in (tmp_path / "ollama").iterdir())
    assert files == ["Modelfile", f"{tiny_run.name}-q8_0.gguf"]
    assert f"ollama create {tiny_run.name} -f {tmp_path / 'ollama' / 'Modelfile'}" in proc.stdout.replace("\n", "")
    assert (tmp_path / "ollama" / "Modelfile").read_text().startswith(f"FROM ./{tiny_run.name}-q8_0.gguf\n")
    assert leftovers(tmp_path) == []
    # only final paths are printed, each of which exists (not the staging folder the merge went into)
    out = " ".join(proc.stdout.split())
    assert ".partial-" not in out and "merged model written" not in out
    assert (
        f"as ollama to {tmp_path / 'ollama'}: {tmp_path / 'ollama' / 'Modelfile'}, {tmp_path / 'ollama' / tiny_run.name}-q8_0.gguf"
        in out
    )
    printed = re.findall(re.escape(str(tmp_path)) + r"[^\s,:]*", out)
    assert printed and all(Path(p).exists() for p in printed), printed


def _refused(*args, cwd=None) -> str:
    proc = cli_here(*args, check=False, cwd=cwd)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return " ".join(proc.stdout.split())


def test_existing_output_is_refused(tiny_run, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    msg = _refused("export", str(tiny_run), "--to", "gguf", "--out", str(tmp_path / "out"))
    assert "already exists" in msg and "--overwrite" in msg
    assert (tmp_path / "out" / "keep").read_text() == "mine"


def test_unfinished_run_is_refused(tiny_run, tmp_path):
    run = tmp_path / "unfinished"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    msg = _refused("export", str(run), "--to", "gguf", "--out", str(tmp_path / "out"))
    assert msg.startswith(
        f"error: {run} is an unfinished run (interrupted before its first checkpoint: no process holds the run, though "
        "run.json still says running, so its training process was killed) with no final weights"
    )
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_unsupported_architecture_for_a_runtime_is_refused(tiny_run, tmp_path):
    run = tmp_path / "moe"
    shutil.copytree(tiny_run, run)
    config = (run / "config.yaml").read_text().replace("name: tiny-phi3", "name: tiny-phimoe")
    (run / "config.yaml").write_text(config)
    msg = _refused("export", str(run), "--to", "onnx", "--out", str(tmp_path / "out"))
    assert "does not build 'phimoe' models for cpu" in msg
    assert not (tmp_path / "out").exists()


def test_unknown_target_and_quant_are_refused(tiny_run, tmp_path):
    # --to takes its choices from the export registry: the command line's one-line error lists them
    proc = cli_here("export", str(tiny_run), "--to", "tflite", "--out", str(tmp_path / "o"), check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "'--to'" in err and "'tflite' is not one of 'gguf', 'ollama', 'onnx'" in err, err
    assert "--quant 'q3_k' is not one of" in _refused(
        "export", str(tiny_run), "--to", "gguf", "--quant", "q3_k", "--out", str(tmp_path / "o")
    )


def test_missing_extra_is_refused(tiny_run, tmp_path):
    """A shim that hides `gguf` from the import system stands in for an environment without the extra."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'gguf' or name.startswith('gguf.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    import os
    import subprocess
    import sys

    from conftest import SRC

    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{SRC}", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "phinetune", "export", str(tiny_run), "--to", "gguf", "--out", str(tmp_path / "o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: export --to gguf needs gguf, which is not installed: pip install 'phinetune[export]'" in " ".join(
        proc.stdout.split()
    )
    assert not (tmp_path / "o").exists()


def test_failed_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from phinetune.errors import PhinetuneError
    from phinetune.export import gguf as gguf_module
    from phinetune.export.run import ExportPlan, export_run

    calls = []

    def fail_second(model_dir, out_file, qtype="f16"):
        calls.append(qtype)
        if len(calls) == 2:
            raise PhinetuneError("simulated failure half way")
        return real(model_dir, out_file, qtype)

    real = gguf_module.write_gguf
    monkeypatch.setattr(gguf_module, "write_gguf", fail_second)
    with pytest.raises(PhinetuneError, match="half way"):
        export_run(str(tiny_run), str(tmp_path / "out"), ExportPlan(to="gguf", quants=("f16", "q8_0")))
    assert calls == ["f16", "q8_0"]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
