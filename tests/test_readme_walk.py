"""Walk the README: every command of its "CLI at a glance" table, on a tiny run, as a user would type it.

The commands are read from README.md itself (placeholders such as RUN, MODEL, DIR filled in, optional
`[...]` parts dropped, a few flags added to keep each one to seconds), so a verb added to the table without
a way to run it here fails this test. Each must end with exit code 0 or 2 (2: one sentence, e.g. no network
for `eval` or no API key for `synth`), never a traceback, and do what the README says it does.

`train` runs as a fresh `python -m phinetune` process, as a user would start it; so do `serve` (it must
outlive the command that starts it) and `bench infer` (it forks a child per dtype for a clean memory baseline,
and a fork of a process whose torch thread pool has already run, as this one's has, can hang in that pool).
Every other command runs through the same entry point, `cli.main()`, in this process (same argument parsing,
error sentences and exit codes, with this walk's environment and working folder: conftest's cli_here),
because a fresh interpreter importing torch and transformers costs seconds per command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SRC, cli_here

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
FRESH_PROCESS = ("train", "bench infer")  # besides serve (see above); the rest runs in this process

FAST_CONFIG = """\
model: {name: tiny-phi3}
data: {train: "builtin:riddles", limit: 24, eval_size: 4}
adapter: {modules_to_save: [embed_tokens, lm_head]}
train: {max_steps: 4, batch_size: 4, eval_every: 2, save_every: 2, log_every: 1, learning_rate: 3.0e-3}
"""


def table_commands() -> list[str]:
    """The `phinetune ...` spans of the CLI table's verb column; a span starting with `--` continues the one before."""
    section = README.split("## CLI at a glance", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for line in section.splitlines():
        cells = [
            c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)
        ]  # `a\|b` inside a cell is one cell
        if len(cells) < 4 or not cells[2].startswith("`"):
            continue
        for span in re.findall(r"`([^`]+)`", cells[2]):
            if span.startswith("--"):  # more flags for the command before it
                commands.append(f"{stem(commands[-1])} {span}")
            elif span.startswith("phinetune "):  # not the other words in backticks (`ipo`, `kto`, ...)
                commands.append(span)
    return commands


def stem(command: str) -> str:
    """`phinetune generate RUN "prompt"` -> `phinetune generate RUN`: the words up to the first placeholder."""
    words = command.split()
    first = next((i for i, w in enumerate(words) if w.isupper()), len(words) - 1)
    return " ".join(words[: first + 1])


def verb_of(command: str) -> str:
    words = command.split()[1:]
    if words[0] == "train" and any(w.startswith("train.objective=") for w in words):
        return "train objective"  # the after-SFT row: a second run of its own
    return " ".join(words[:2]) if words[0] in ("data", "bench") else words[0]


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    config = root / "fast.yaml"
    config.write_text(FAST_CONFIG)
    (root / "prompts.jsonl").write_text(
        '{"prompt": "What has keys?"}\n{"prompt": "What gets wetter the more it dries?"}\n'
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "PHINETUNE_TEACHER_BASE_URL", "OPENAI_BASE_URL")
    }
    env.update(
        PYTHONPATH=str(SRC),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PHINETUNE_QUIET="1",
        COLUMNS="200",
        PHINETUNE_CACHE=str(root / "cache"),
    )
    return root, config, env


def fill(command: str, root: Path, config: Path) -> list[str]:
    """README placeholders -> this walk's files; optional [..] groups dropped."""
    command = re.sub(r"\s*\[[^\]]*\]", "", command)
    words = shlex.split(command)[1:]
    run = str(root / "run")
    verb = verb_of(command)
    values = {
        "RUN": run,
        "CONFIG": str(config),
        "DATA": "builtin:riddles",
        "M": "tiny-phi3",
        "MODEL": "tiny-phi3",
        "DIR": str(root / ("export-gguf" if verb == "export" else "merged")),
        "REPO_ID": "you/phi3-riddles",
        "gguf|ollama|onnx": "gguf",
        "slurm|k8s": "slurm",
        "data.train=PAIRS.jsonl": "data.train=builtin:riddles_preferences",
        "prompts.jsonl": str(root / "prompts.jsonl"),
        "answers.jsonl": str(root / "answers.jsonl"),
    }
    words = [values.get(w, str(ROOT / w) if w.startswith("configs/") else w) for w in words]
    if verb == "train objective":  # the config first (the one argument without '='), then the row's overrides
        return words[:1] + [str(config)] + words[1:] + [f"output.dir={root / 'after-sft'}"]
    extra = {
        "train": [str(config), f"output.dir={run}"],
        "check": [],
        "generate": ["--max-new-tokens", "4"],
        "chat": ["--max-new-tokens", "4"],
        "compare": ["--n", "2", "--max-new-tokens", "4"],
        "eval": ["--limit", "2"],
        "report": ["--samples", "1"],
        "serve": ["--port", str(free_port())],
        "merge": [],
        "inspect": [],
        "plan": [],
        "data inspect": ["--out", str(root / "data-inspect")],
        "synth": [f"output.dir={root / 'synth'}", "stages.riddles.calls=1"],
        # one side: the three sides and their ratios are test_bench_train's (each side is a fresh process)
        "bench train": ["--workload", "tiny", "--work-dir", str(root / "bench"), "--sides", "phinetune"],
        "bench infer": [
            "--prompt-tokens",
            "8",
            "--new-tokens",
            "4",
            "--batch-sizes",
            "1",
            "--out",
            str(root / "bench-infer.json"),
        ],
        "bench serve": ["--concurrency", "1", "--requests", "2", "--max-tokens", "4"],
        "export": [],
        "push": [],
        "judge": ["--n", "1", "--max-new-tokens", "4"],
        "launch-template": ["--out", str(root / "job.sbatch")],
    }[verb]
    return words + extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(words: list[str], env: dict, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phinetune", *words],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
    )


def serve_and_ask(words: list[str], env: dict, cwd: Path) -> tuple[str, dict, dict]:
    import httpx

    port = int(words[words.index("--port") + 1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "phinetune", *words],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                return "", health, httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
            except httpx.HTTPError:
                time.sleep(1)
        return proc.communicate(timeout=30)[0], {}, {}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_every_readme_command_runs_and_does_what_the_readme_says(walk):
    root, config, env = walk
    commands = table_commands()
    verbs = [verb_of(c) for c in commands]
    assert {"train", "generate", "serve", "merge", "eval", "report", "bench infer"} <= set(verbs), verbs
    # train first: it makes the RUN every later command is given
    ordered = sorted(commands, key=lambda c: verb_of(c) != "train")
    outcomes = {}
    for command in ordered:
        words = fill(command, root, config)
        verb = verb_of(command)
        if verb == "serve":
            out, health, models = serve_and_ask(words, env, root)
            assert health.get("status") == "ok" and models.get("data"), (
                f"{command}: the server never answered\n{out[-3000:]}"
            )
            continue
        stdin = "What has keys?\n/reset\n/exit\n" if verb == "chat" else ""
        if verb in FRESH_PROCESS:
            proc = run(words, env, root, stdin=stdin)
        else:
            proc = cli_here(*words, env=env, cwd=root, stdin=stdin, check=False)
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text, f"phinetune {' '.join(words)}:\n{text[-4000:]}"
        assert proc.returncode in (0, 2), f"phinetune {' '.join(words)} exited {proc.returncode}:\n{text[-4000:]}"
        if proc.returncode == 2:  # a refusal is one sentence that starts with "error:"
            assert proc.stdout.strip().splitlines()[-1].startswith("error:") or "error:" in proc.stdout, text[-2000:]
        outcomes[verb] = proc
        if verb == "train":
            assert proc.returncode == 0, text[-4000:]
    check_promises(root, outcomes)


def check_promises(root: Path, outcomes: dict) -> None:
    """What the README says each verb leaves behind or prints."""
    run = root / "run"
    flat = {verb: " ".join((p.stdout + p.stderr).split()) for verb, p in outcomes.items()}
    assert "pre-flight" in flat["train"] and re.search(
        r"eval loss: [\d.]+ at step 0 -> [\d.]+ after 4 steps", flat["train"]
    )
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # The run-folder block: every file it lists is there (eval.json only when eval could run here).
    block = README.split("## The run folder", 1)[1].split("```")[1]
    # Lines for what only other runs write (preference, eval.tasks, --checkpoints, a judge with a key) are not this run's.
    conditional = ("preference", "eval.tasks", "--checkpoints", "phinetune judge")
    listed = {
        name
        for line in block.splitlines()
        if not any(c in line for c in conditional)
        for name in re.findall(r"runs/NAME/([\w.]+)", line)
    }
    if outcomes["eval"].returncode != 0:
        listed.discard("eval.json")
    assert listed and not {name for name in listed if not (run / name).exists()}, listed
    assert outcomes["check"].returncode == 0 and "pre-flight passed" in flat["check"]
    merged = root / "merged"
    assert (
        list(merged.glob("*.safetensors"))
        and (merged / "tokenizer.json").exists()
        and (merged / "chat_template.jinja").exists()
    )
    answers = [json.loads(line) for line in (root / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all("response" in a for a in answers)
    assert (
        outcomes["generate"].returncode == 0
        and "phi>" in outcomes["chat"].stdout
        and "conversation cleared" in flat["chat"]
    )
    assert (run / "compare.md").exists() and (run / "report.html").exists() and (run / "report.md").exists()
    assert "parameters" in flat["inspect"] and "smallest GPU" in flat["plan"]
    assert (root / "data-inspect" / "report.json").exists()
    assert outcomes["bench infer"].returncode == 0 and (root / "bench-infer.json").exists()
    assert outcomes["bench train"].returncode == 0 and "tokens/s" in flat["bench train"]
    assert outcomes["train objective"].returncode == 0, flat["train objective"][-2000:]
    assert json.loads((root / "after-sft" / "run.json").read_text())["status"] == "finished"
    assert list((root / "export-gguf").glob("*.gguf")), flat["export"][-2000:]
    # an adapter on the tiny (local) base would load nowhere else: one sentence saying so, nothing uploaded
    assert (
        outcomes["push"].returncode == 2 and "--local-base" in flat["push"] and "nothing was uploaded" in flat["push"]
    )
    assert outcomes["bench serve"].returncode == 0 and "p95" in flat["bench serve"]
    assert outcomes["launch-template"].returncode == 0 and "#SBATCH --nodes=2" in (root / "job.sbatch").read_text()
    if outcomes["eval"].returncode == 2:  # no network here: the sentence says what to do instead
        assert "--data-dir" in flat["eval"]
