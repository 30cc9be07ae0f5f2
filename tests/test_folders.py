"""runs/folders.py: every folder a user may hand a verb is named for what it is, with what to pass instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phinetune.errors import PhinetuneError
from phinetune.runs import folders
from phinetune.runs.folders import classify, model_problem, open_run, require_model, require_run, run_problem
from phinetune.runs.run_dir import RunDir, RunInfo, write_merged_marker


def fake_run(path: Path) -> RunDir:
    """The files of a finished LoRA run, written by hand (classification reads names, never weights)."""
    run = RunDir(path)
    path.mkdir(parents=True)
    run.write_info(RunInfo("microsoft/Phi-3-mini-4k-instruct", "phi3-mini", "lora", "none", "bf16", status="finished"))
    run.config.write_text("model:\n  name: microsoft/Phi-3-mini-4k-instruct\n")
    for folder in (
        run.adapter,
        run.tokenizer,
        run.checkpoints / "step-2",
        run.checkpoints / "step-4",
        run.report_plots,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    (run.adapter / "adapter_config.json").write_text("{}")
    (run.adapter / "adapter_model.safetensors").write_bytes(b"")
    for step in ("step-2", "step-4"):
        (run.checkpoints / step / "trainer_state.json").write_text("{}")
    return run


def fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.fixture
def tree(tmp_path):
    runs = tmp_path / "runs"
    run = fake_run(runs / "default")
    fake_run(runs / "second")
    merged = fake_model(tmp_path / "merged")
    write_merged_marker(merged, "phi3-mini", run)
    fake_model(tmp_path / "model")
    fake_model(run.path / "base" / "tiny-phi3-seed0")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    for name in ("a.txt", "b.csv", "c.md", "d.json"):
        (tmp_path / "notes" / name).write_text("x")
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "run-f16.gguf").write_bytes(b"GGUF")
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text("{}")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    (tmp_path / "tokenizer" / "config.json").write_text("{}")  # a Hub download of config and tokenizer, without weights
    return tmp_path


# (path under the tree, kind, the run it belongs to or None, checkpoint name)
CASES = [
    ("runs/default", folders.RUN, "runs/default", None),
    ("runs/default/adapter", folders.ADAPTER, "runs/default", None),
    ("runs/default/checkpoints/step-4", folders.CHECKPOINT, "runs/default", "step-4"),
    ("runs/default/checkpoints", folders.CHECKPOINTS, "runs/default", None),
    ("runs/default/tokenizer", folders.RUN_PART, "runs/default", None),
    ("runs/default/base", folders.RUN_PART, "runs/default", None),
    ("runs/default/base/tiny-phi3-seed0", folders.MODEL, "runs/default", None),
    ("runs/default/run.json", folders.FILE, "runs/default", None),
    ("runs", folders.RUNS, None, None),
    ("merged", folders.MERGED, "runs/default", None),
    ("model", folders.MODEL, None, None),
    ("gguf", folders.EXPORT, None, None),
    ("tokenizer", folders.TOKENIZER, None, None),
    ("peft", folders.ADAPTER, None, None),
    ("empty", folders.EMPTY, None, None),
    ("notes", folders.OTHER, None, None),
    ("nope", folders.MISSING, None, None),
]


@pytest.mark.parametrize("where,kind,run,step", CASES, ids=[c[0] for c in CASES])
def test_each_folder_is_classified_by_what_it_holds(tree, where, kind, run, step):
    f = classify(tree / where)
    assert (f.kind, f.run, f.step) == (kind, tree / run if run else None, step)


def test_a_run_whose_run_json_was_deleted_is_still_a_run(tree):
    (tree / "runs" / "default" / "run.json").unlink()
    assert classify(tree / "runs" / "default").kind == folders.RUN
    with pytest.raises(
        PhinetuneError, match=r"default is a damaged run folder: .*default/run\.json is missing; train it again"
    ):
        open_run(tree / "runs" / "default")
    with pytest.raises(PhinetuneError, match=r"run\.json is missing: the run folder .* is damaged"):
        RunDir(tree / "runs" / "default").read_info()


# Where a model is expected: what the sentence must say (besides the path), or None when the folder loads.
MODEL_ADVICE = {
    "runs/default": None,
    "model": None,
    "merged": None,
    "runs/default/base/tiny-phi3-seed0": None,
    "runs/default/adapter": "is the adapter folder inside the run {t}/runs/default; pass the run folder itself: {t}/runs/default",
    "runs/default/checkpoints/step-4": "is checkpoint step-4 of the run {t}/runs/default; pass the run folder with the checkpoint: "
    "{t}/runs/default --checkpoint step-4",
    "runs/default/checkpoints": "pass the run folder with a checkpoint: {t}/runs/default --checkpoint last",
    "runs/default/tokenizer": "is the tokenizer folder inside the run {t}/runs/default; pass the run folder itself",
    "runs": "is a folder of runs (default, second); pass one of them, e.g. {t}/runs/default",
    "empty": "is an empty folder; pass a run folder from `phinetune train`, a merged folder",
    "notes": "holds no model files (no config.json with weights; it has a.txt, b.csv, c.md, ...)",
    "gguf": "is an export for another runtime (GGUF or ONNX), which phinetune does not load",
    "peft": "holds a PEFT adapter but is not inside a phinetune run folder; pass the run folder it was trained in",
    "tokenizer": "holds a tokenizer but no model weights (no config.json with *.safetensors); pass a run folder",
}


@pytest.mark.parametrize("where", sorted(MODEL_ADVICE))
def test_where_a_model_is_expected(tree, where):
    problem = model_problem(classify(tree / where))
    expected = MODEL_ADVICE[where]
    if expected is None:
        assert problem is None
        assert require_model(tree / where).path == tree / where
        return
    assert problem.startswith(f"{tree / where} ") and expected.format(t=tree) in problem
    with pytest.raises(PhinetuneError):
        require_model(tree / where)


RUN_ADVICE = {
    "runs/default": None,
    "merged": "is a merged model folder (merged from {t}/runs/default), not a run folder; this command reads a run's records "
    "(config, metrics, checkpoints): pass the run it was merged from: {t}/runs/default",
    "model": "is a model folder, not a run folder from `phinetune train`; pass the output.dir of a `phinetune train` run",
    "runs/default/base/tiny-phi3-seed0": "is a model folder inside the run {t}/runs/default; pass the run folder itself: {t}/runs/default",
    "runs/default/checkpoints/step-4": "pass the run folder with the checkpoint: {t}/runs/default --checkpoints step-4",
    "runs/default/adapter": "pass the run folder itself: {t}/runs/default",
    "empty": "is an empty folder; pass the output.dir of a `phinetune train` run",
}


@pytest.mark.parametrize("where", sorted(RUN_ADVICE))
def test_where_a_run_is_expected_the_advice_uses_the_commands_own_flag(tree, where):
    problem = run_problem(classify(tree / where), checkpoint_flag="--checkpoints")
    expected = RUN_ADVICE[where]
    if expected is None:
        assert problem is None and require_run(tree / where).kind == folders.RUN
        return
    assert expected.format(t=tree) in problem
    with pytest.raises(PhinetuneError, match="^" + str(tree / where)):
        open_run(tree / where)


def test_a_command_without_a_checkpoint_option_names_only_the_run(tree):
    problem = run_problem(classify(tree / "runs/default/checkpoints/step-2"), checkpoint_flag=None)
    assert problem.endswith(f"pass the run folder itself: {tree / 'runs/default'}") and "--" not in problem


def test_a_missing_run_folder(tree):
    with pytest.raises(PhinetuneError, match="run folder .*nope does not exist; pass the output.dir"):
        require_run(tree / "nope")


def test_a_merged_folder_without_weights_is_named(tree):
    (tree / "merged" / "model.safetensors").unlink()
    assert "merged model folder without its weights" in model_problem(classify(tree / "merged"))


def test_a_tokenizer_folder_will_do_where_only_a_tokenizer_is_read(tree):
    assert model_problem(classify(tree / "tokenizer"), tokenizer_only=True) is None
    assert model_problem(classify(tree / "runs/default/adapter"), tokenizer_only=True) is not None
