"""End to end through the real `phinetune` command on a tiny model, and bad input as one clear sentence.

`train`, `chat`, the bad-input cases and `--help` run as fresh processes; `generate` and `merge` of the trained
run go through the same `cli.main()` in this process (conftest's cli_here): they are about what the verbs do,
and a fresh interpreter importing torch costs seconds each."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli_here, run_cli

FAST = ["data.limit=24", "data.eval_size=4", "train.epochs=2", "train.recall_check=4", "train.eval_every=5"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", *FAST, f"output.dir={out}")
    return out, proc.stdout


@pytest.mark.slow
def test_train_with_embedded_default_prints_eval_drop_and_recall(cli_run):
    out, stdout = cli_run
    assert "pre-flight" in stdout and "end-of-turn token <|end|> trained: yes" in stdout
    assert "recall:" in stdout and "eval loss:" in stdout
    first, final = [
        float(x) for x in stdout.split("eval loss:")[1].split("after")[0].replace("at step 0", "").split("->")
    ]
    assert final < first
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_generate_single_prompt_and_file(cli_run, tmp_path):
    out, _ = cli_run
    proc = cli_here("generate", str(out), "What gets wetter the more it dries?", "--max-new-tokens", "8")
    assert proc.stdout.strip()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "What has keys?"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Hi"}]})
        + "\n"
    )
    answers = tmp_path / "answers.jsonl"
    cli_here("generate", str(out), "--input", str(prompts), "--output", str(answers), "--max-new-tokens", "8")
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 2 and all("response" in r for r in rows)


def test_merge_then_generate_from_merged_folder(cli_run, tmp_path):
    out, _ = cli_run
    merged = tmp_path / "merged"
    cli_here("merge", str(out), "--out", str(merged))
    assert list(merged.glob("*.safetensors")) and (merged / "tokenizer_config.json").exists()
    assert cli_here("generate", str(merged), "What has keys?", "--max-new-tokens", "8").returncode == 0


@pytest.mark.slow
def test_chat_streams_and_exits(cli_run):
    out, _ = cli_run
    import os
    import subprocess
    import sys

    from conftest import SRC

    env = {**os.environ, "PYTHONPATH": str(SRC), "PHINETUNE_QUIET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "phinetune", "chat", str(out), "--max-new-tokens", "8", "--temperature", "0"],
        input="What has keys?\n/exit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "phi>" in proc.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["data.train=/nonexistent/data.jsonl"], "data file '/nonexistent/data.jsonl' does not exist"),
        (["train.learnig_rate=1e-4"], "did you mean 'train.learning_rate'"),
        (["model.name=microsoft/not-a-cached-model"], "could not load model 'microsoft/not-a-cached-model'"),
        (["model.dtype=fp16", "model.name=tiny-phi2"], "refused for phi2"),
    ],
)
def test_bad_input_is_one_clear_sentence(args, message, tmp_path):
    proc = run_cli("train", *args, f"output.dir={tmp_path / 'r'}", check=False)
    assert proc.returncode == 2
    assert message in " ".join(proc.stdout.split())
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_existing_run_folder_is_refused(cli_run):
    out, _ = cli_run
    proc = run_cli("train", *FAST, f"output.dir={out}", check=False)
    assert proc.returncode == 2 and "already finished; choose another output.dir" in " ".join(proc.stdout.split())


def test_help_explains_every_verb():
    top = run_cli("--help").stdout
    for verb in ["train", "merge", "generate", "chat"]:
        assert verb in top
        assert "Usage" in run_cli(verb, "--help").stdout


@pytest.mark.parametrize(
    "out_dir,why", [("/proc/phinetune-x", "No such file or directory"), ("/etc/passwd/run", "Not a directory")]
)
def test_unusable_output_dir_is_one_sentence_naming_it(out_dir, why, monkeypatch, capsys):
    """An OSError at a user-given path (FileNotFoundError, NotADirectoryError) is exit 2 and one sentence, in-process."""
    import sys

    from phinetune.cli import main

    monkeypatch.setattr(sys, "argv", ["phinetune", "train", *FAST, f"output.dir={out_dir}"])
    with pytest.raises(SystemExit) as stop:
        main()
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 2 and f"error: {out_dir}" in out and why in out and "Traceback" not in out


def test_chat_reset_confirms(capsys):
    from phinetune.infer.chat import chat_loop

    typed = iter(["/reset", "/exit"])
    chat_loop(None, None, system="Be brief.", read=lambda prompt: next(typed))  # commands never touch the model
    assert "conversation cleared (system prompt kept)" in capsys.readouterr().out


def test_config_as_a_named_option_is_the_positional_config(tmp_path):
    """`--config x.yaml`, as other toolkits spell it, reads the same file as the positional CONFIG (train, check,
    synth; launch-template in test_cluster.py); both at once is one sentence."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  learnig_rate: 1e-3\n")
    for verb in ("train", "check"):
        proc = cli_here(verb, "--config", str(cfg), "train.epochs=2", check=False)
        assert proc.returncode == 2 and f"{cfg}:2: unknown key 'train.learnig_rate'" in proc.stdout, (
            proc.stdout + proc.stderr
        )
    proc = cli_here("train", str(cfg), "--config", str(cfg), check=False)
    assert proc.returncode == 2 and f"two configs given, {cfg} and --config {cfg}; pass one" in " ".join(
        proc.stdout.split()
    )
    synth = tmp_path / "synth.yaml"
    synth.write_text(
        "seeds: {path: builtin:riddles}\nteacher: {model: m}\nstages: {answer: {kind: assistant, promt: x}}\n"
    )
    proc = cli_here("synth", "--config", str(synth), check=False)
    assert proc.returncode == 2 and "did you mean 'stages.answer.prompt'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and "No such option" not in proc.stdout + proc.stderr


def test_train_help_and_the_readme_give_the_same_time_for_the_default_run():
    import re
    from pathlib import Path

    helped = " ".join(cli_here("train", "--help").stdout.split())
    said = re.search(r"With no arguments: (.+?\(CPU, no network, (about [\d-]+ s on an idle 2-core machine)\))", helped)
    assert said and "tiny built-in Phi-3-architecture model over the 64 bundled riddles" in said.group(1), helped[:600]
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    setup = readme.split("## Set-up")[1].split("## Quick start")[0]
    assert setup.count(said.group(2)) == 2, said.group(
        2
    )  # the install line and "What the default run does" say the same


# ---------------------------------------------------------------- a folder of the wrong kind, for every verb
# Each verb given a folder it cannot use exits 2 with one sentence that says what the folder is and what to pass
# instead, checked against the kind of folder the test built (and before any model is loaded).


def verb_args(verb: str, folder, out) -> list[str]:
    """The command line of `verb` with `folder` where it takes its run or model; outputs go under `out`."""
    folder = str(folder)
    return {
        "generate": ["generate", folder, "hi", "--max-new-tokens", "2"],
        "chat": ["chat", folder],
        "serve": ["serve", folder, "--port", "1"],
        "compare": ["compare", folder, "--out", str(out / "compare.md")],
        "eval": ["eval", folder, "--limit", "1", "--data-dir", str(out)],
        "merge": ["merge", folder, "--out", str(out / "merged")],
        "export": ["export", folder, "--to", "gguf", "--out", str(out / "export")],
        "push --dry-run": ["push", folder, "me/riddles", "--dry-run", "--out", str(out / "push")],
        "report": ["report", folder],
        "judge": ["judge", folder, "--judge-model", "any"],
        "data inspect --model": [
            "data",
            "inspect",
            "builtin:riddles",
            "--model",
            folder,
            "--out",
            str(out / "inspect"),
        ],
        "train model.name": ["train", f"model.name={folder}", f"output.dir={out / 'train'}"],
    }[verb]


MODEL_VERBS = ["generate", "chat", "serve"]  # take a run, a merged folder or a model
RUN_VERBS = ["compare", "eval", "merge", "export", "push --dry-run", "report", "judge"]  # take a run folder
TOKENIZER_VERBS = ["data inspect --model", "train model.name"]  # take a model, and a run is not one
VERBS = MODEL_VERBS + RUN_VERBS + TOKENIZER_VERBS
# How each verb takes a checkpoint of a run, and the last checkpoint of a damaged one (step-4 of checkpointed_run).
CHECKPOINT_FLAG = {
    **dict.fromkeys(MODEL_VERBS + ["merge", "export"], "--checkpoint"),
    "compare": "--checkpoints",
    "eval": "--checkpoints",
    "judge": "--b",
}
DAMAGED_OFFER = {
    **dict.fromkeys(MODEL_VERBS + ["merge", "export"], "pass --checkpoint last to use its last checkpoint (step-4)"),
    "compare": "pass --checkpoints base,step-4",
    "eval": "pass --checkpoints base,step-4",
    "judge": "pass --b step-4",
    "push --dry-run": "its last checkpoint (step-4) is intact",
    "report": "pass --samples 0",
}


@pytest.fixture(scope="module")
def wrong_kinds(checkpointed_run, tmp_path_factory):
    """One folder of each wrong kind, around a real run with checkpoints step-2 and step-4."""
    import shutil

    from conftest import linked_copy

    root = tmp_path_factory.mktemp("wrong-kinds")
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("train on riddles\n")
    (root / "notes" / "data.csv").write_text("question,answer\n")
    shutil.copytree(checkpointed_run / "base" / "tiny-phi3-seed0", root / "model")  # a real Hugging Face model folder
    no_weights = linked_copy(checkpointed_run, root / "no-weights" / "run")
    (no_weights / "adapter" / "adapter_model.safetensors").unlink()
    no_adapter = linked_copy(checkpointed_run, root / "no-adapter" / "run")
    shutil.rmtree(no_adapter / "adapter")
    return {
        "adapter": checkpointed_run / "adapter",
        "checkpoint": checkpointed_run / "checkpoints" / "step-2",
        "empty": root / "empty",
        "files": root / "notes",
        "model": root / "model",
        "run": checkpointed_run,
        "no weights": no_weights,
        "no adapter/": no_adapter,
        "runs": checkpointed_run.parent,
    }


def expected_sentence(verb: str, kind: str, folder, run) -> list[str]:
    """What the one sentence must contain, written from the kind of folder the test made."""
    base = json.loads((run / "run.json").read_text())["base_model"]
    if verb in TOKENIZER_VERBS and kind in ("adapter", "checkpoint", "run", "no weights", "no adapter/"):
        where = {
            "adapter": f"{folder} is the adapter folder inside the run {run}",
            "checkpoint": f"{folder} is checkpoint step-2 of the run {run}",
        }
        return [
            where.get(kind, f"{folder} is a run folder") + ", not a model;",
            {"data inspect --model": f"--model {base}"}.get(verb, f"model.name={base}"),
        ]
    flag = CHECKPOINT_FLAG.get(verb)
    return {
        "adapter": [f"{folder} is the adapter folder inside the run {run}; pass the run folder itself: {run}"],
        "checkpoint": [
            f"{folder} is checkpoint step-2 of the run {run}; pass the run folder "
            + (f"with the checkpoint: {run} {flag} step-2" if flag else f"itself: {run}")
        ],
        "empty": [f"{folder} is an empty folder; pass "],
        "files": [f"{folder} holds no model files (no config.json with weights; it has data.csv, todo.txt)"],
        "model": [f"{folder} is a model folder, not a run folder from `phinetune train`"],
        "no weights": [
            f"{folder} is damaged: {folder}/adapter/adapter_model.safetensors is missing; {DAMAGED_OFFER.get(verb, '')}"
        ],
        "no adapter/": [f"{folder} is damaged: {folder}/adapter is missing; {DAMAGED_OFFER.get(verb, '')}"],
        "runs": [f"{folder} is a folder of runs (run); pass one of them, e.g. {folder / 'run'}"],
    }[kind]


WRONG = [
    (verb, kind)
    for verb in VERBS
    for kind in ["adapter", "checkpoint", "empty", "files", "no weights", "no adapter/", "runs"]
]
WRONG += [(verb, "model") for verb in RUN_VERBS] + [(verb, "run") for verb in TOKENIZER_VERBS]


def one_sentence(proc) -> str:
    said = " ".join(proc.stdout.split())
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert said.startswith("error: ") and said.count("error:") == 1, said
    return said


@pytest.mark.parametrize("verb,kind", WRONG, ids=[f"{v}-{k}" for v, k in WRONG])
def test_a_folder_of_the_wrong_kind_is_one_sentence(wrong_kinds, checkpointed_run, tmp_path, verb, kind):
    folder = wrong_kinds[kind]
    said = one_sentence(cli_here(*verb_args(verb, folder, tmp_path), check=False))
    for part in expected_sentence(verb, kind, folder, checkpointed_run):
        assert part in said, f"{part!r} not in {said!r}"
    assert not any(tmp_path.iterdir())  # refused before it wrote anything


NOT_JUNK = {
    "config.json",
    "adapter_config.json",
    "genai_config.json",
    "run.json",
    "config.yaml",
    "phinetune.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
junk_names = st.builds(
    lambda stem, ext: f"{stem}.{ext}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10),
    st.sampled_from(["txt", "csv", "md", "json", "yaml", "jsonl", "py", "png", "log"]),
).filter(lambda n: n not in NOT_JUNK)
# What a run's final weights need, one of them deleted (relative to the run folder).
NEEDED = [
    "adapter",
    "adapter/adapter_model.safetensors",
    "adapter/adapter_config.json",
    "tokenizer",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "config.yaml",
    "run.json",
]


def _inside(run):
    """Every folder inside the run that is not a model of its own (RUN/base/<model> is one)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_dir() and not (p / "config.json").exists())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(VERBS), data=st.data())
def test_no_verb_prints_a_traceback_for_a_folder_of_the_wrong_kind(checkpointed_run, verb, data):
    """Property: a folder of files that are no model, any folder inside a run, or a run missing one of the files its
    final weights need: every verb exits 2 with one sentence naming the folder (and the missing file), no traceback."""
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import linked_copy

    kind = data.draw(st.sampled_from(["files", "inside a run", "damaged run"]), label="kind")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        out.mkdir()
        must_say = []
        if kind == "files":
            folder = tmp / "mine"
            folder.mkdir()
            for name in data.draw(st.lists(junk_names, max_size=5, unique=True), label="files"):
                (folder / name).write_bytes(data.draw(st.binary(max_size=64), label=name))
            must_say.append("is an empty folder" if not any(folder.iterdir()) else "holds no model files")
        elif kind == "inside a run":
            folder = checkpointed_run / data.draw(st.sampled_from(_inside(checkpointed_run)), label="inside")
            must_say.append(f"the run {checkpointed_run}")
        else:
            folder = linked_copy(checkpointed_run, tmp / "run")
            gone = folder / data.draw(st.sampled_from(NEEDED), label="deleted")
            shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
            if verb not in TOKENIZER_VERBS:
                must_say += ["damaged", f"{gone} is missing"]
        said = one_sentence(cli_here(*verb_args(verb, folder, out), check=False))
        assert str(folder) in said
        for part in must_say:
            assert part in said, f"{part!r} not in {said!r}"
        assert not any(out.iterdir())
