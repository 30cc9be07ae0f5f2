"""End to end through the real `phinetune` command on a tiny model, and bad input as one clear sentence.

`train`, `chat`, the bad-input cases and `--help` run as fresh processes; `generate` and `merge` of the trained
run go through the same `cli.main()` in this process (conftest's cli_here): they are about what the verbs do,
and a fresh interpreter importing torch costs seconds each."""

import json

import pytest

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
    first, final = [float(x) for x in stdout.split("eval loss:")[1].split("after")[0].replace("at step 0", "").split("->")]
    assert final < first
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_generate_single_prompt_and_file(cli_run, tmp_path):
    out, _ = cli_run
    proc = cli_here("generate", str(out), "What gets wetter the more it dries?", "--max-new-tokens", "8")
    assert proc.stdout.strip()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What has keys?"}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
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
    proc = subprocess.run([sys.executable, "-m", "phinetune", "chat", str(out), "--max-new-tokens", "8", "--temperature", "0"],
                          input="What has keys?\n/exit\n", capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "phi>" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["data.train=/nonexistent/data.jsonl"], "data file '/nonexistent/data.jsonl' does not exist"),
    (["train.learnig_rate=1e-4"], "did you mean 'train.learning_rate'"),
    (["model.name=microsoft/not-a-cached-model"], "could not load model 'microsoft/not-a-cached-model'"),
    (["model.dtype=fp16", "model.name=tiny-phi2"], "refused for phi2"),
])
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


@pytest.mark.parametrize("out_dir,why", [("/proc/phinetune-x", "No such file or directory"), ("/etc/passwd/run", "Not a directory")])
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
