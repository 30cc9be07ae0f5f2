"""`phinetune push --dry-run`: the folder that would be uploaded, with a complete model card."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from conftest import cli_here


def card_parts(folder):
    text = (folder / "README.md").read_text()
    front, body = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S).groups()
    return yaml.safe_load(front), body


def test_adapter_dry_run_writes_a_loadable_adapter_and_a_complete_card(tiny_run, tmp_path):
    from peft import PeftConfig

    out = tmp_path / "upload"
    cli_here("push", str(tiny_run), "me/riddles", "--dry-run", "--out", str(out))
    files = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
        "loss.png",
    } <= files
    assert PeftConfig.from_pretrained(str(out)).peft_type == "LORA"
    front, body = card_parts(out)
    assert (
        front["library_name"] == "peft" and "phinetune" in front["tags"] and front["pipeline_tag"] == "text-generation"
    )
    config = (tiny_run / "config.yaml").read_text().rstrip()
    for expected in [
        "# me/riddles",
        "builtin:riddles",
        config,
        "## Pre-flight",
        "trainable parameters",
        "end-of-turn token trained",
        "## Evaluation: base vs fine-tuned",
        f"phinetune eval {tiny_run.name}",
        "![training and eval loss](loss.png)",
        'AutoPeftModelForCausalLM.from_pretrained("me/riddles")',
        'PeftModel.from_pretrained(base, "me/riddles")',
        f"phinetune export {tiny_run.name} --to gguf",
        "llama-cli -m",
        "ollama create",
        "`<|end|>`",
    ]:
        assert expected in body, expected
    assert "{{" not in body and "{%" not in body
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_eval_table_appears_when_the_run_was_evaluated(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "evaluated"
    shutil.copytree(tiny_run, run)
    report = {
        "scorer": "phinetune",
        "shots": 0,
        "limit": 10,
        "data": "arc_easy",
        "rows": [
            {
                "task": "arc_easy",
                "metric": "acc",
                "n": 10,
                "base": 0.3,
                "tuned": 0.4,
                "delta": 0.1,
                "stderr": 0.05,
                "drop": False,
            }
        ],
    }
    (run / "eval.json").write_text(json.dumps(report))
    cli_here("push", str(run), "me/riddles", "--dry-run", "--out", str(tmp_path / "up"))
    _, body = card_parts(tmp_path / "up")
    assert "| arc_easy | acc | 10 | 0.3000 | 0.4000 | +0.1000 | 0.0500 |" in body


@pytest.mark.slow
def test_merged_dry_run_has_weights_and_transformers_usage(tiny_run, tmp_path):
    out = tmp_path / "merged"
    cli_here("push", str(tiny_run), "me/riddles-merged", "--merged", "--dry-run", "--out", str(out))
    assert list(out.glob("*.safetensors")) and (out / "config.json").exists()
    front, body = card_parts(out)
    assert front["library_name"] == "transformers"
    assert 'AutoModelForCausalLM.from_pretrained("me/riddles-merged")' in body and "not a PEFT adapter" in body


def test_push_without_a_token_says_so(tiny_run, tmp_path):
    env_home = tmp_path / "hf-home"
    env_home.mkdir()
    saved = {k: os.environ.pop(k, None) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    os.environ["HF_HOME"] = str(env_home)
    try:
        proc = cli_here("push", str(tiny_run), "me/riddles", "--local-base", check=False)
    finally:
        os.environ.pop("HF_HOME")
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "needs a token" in " ".join(proc.stdout.split())


def test_existing_dry_run_output_and_conflicting_modes_are_refused(tiny_run, tmp_path):
    (tmp_path / "taken").mkdir()
    proc = cli_here("push", str(tiny_run), "me/x", "--dry-run", "--out", str(tmp_path / "taken"), check=False)
    assert proc.returncode == 2 and "already exists" in proc.stdout
    proc = cli_here(
        "push", str(tiny_run), "me/x", "--merged", "--gguf", "--dry-run", "--out", str(tmp_path / "o"), check=False
    )
    assert proc.returncode == 2 and "choose one of" in proc.stdout


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^(`{3,})[^\n]*\n(.*?)^\1$", markdown, re.S | re.M)


def test_an_adapter_on_a_local_base_is_named_as_such_warned_on_a_dry_run_and_refused_on_a_push(tiny_run, tmp_path):
    base = json.loads((tiny_run / "run.json").read_text())["base_model"]  # the built-in tiny base: a folder in the run
    out = tmp_path / "upload"
    proc = cli_here("push", str(tiny_run), "me/riddles", "--dry-run", "--out", str(out))
    said = " ".join(proc.stdout.split())
    assert (
        f"warning: the adapter's base is the local model {base}, so the uploaded adapter would load only where that folder "
        "exists; push --merged to upload standalone weights" in said
    )
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    front, body = card_parts(out)
    assert (
        "base_model" not in front
        and f"`{base}` (a local model: this adapter loads only where that folder exists" in body
    )
    assert f"phinetune push {tiny_run.name} me/riddles --merged" in body
    bold = re.compile(r"\*\*[^*\n]+\*\*")  # **...** on one line (Python's `**kwargs` alone is not bold)
    assert (
        bold.search(body) and code_blocks(body) and not [b for _, b in code_blocks(body) if bold.search(b)]
    )  # never in a code block
    assert "[[" in body.split("## Pre-flight")[1]  # the trained tokens are still marked
    os.environ["HF_TOKEN"] = "hf_not_a_real_token"  # the refusal comes before any upload is tried
    try:
        proc = cli_here("push", str(tiny_run), "me/riddles", check=False)
    finally:
        os.environ.pop("HF_TOKEN")
    said = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and said.count("error:") == 1
    assert (
        "would load only where that folder exists" in said
        and "pass --local-base to upload the adapter anyway (nothing was uploaded)" in said
    )


@pytest.mark.parametrize(
    "recorded",
    [
        "microsoft/Phi-3-mini-4k-instruct",
        "/home/me/.cache/huggingface/hub/models--microsoft--Phi-3-mini-4k-instruct/snapshots/0a67737",
    ],
)
def test_an_adapter_on_a_hub_base_names_the_hub_id(tiny_run, tmp_path, recorded):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "hubrun")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"base_model": recorded}))
    proc = cli_here("push", str(run), "me/riddles", "--dry-run", "--out", str(tmp_path / "up"))
    assert "warning" not in proc.stdout
    assert (
        json.loads((tmp_path / "up" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "microsoft/Phi-3-mini-4k-instruct"
    )
    front, body = card_parts(tmp_path / "up")
    assert front["base_model"] == "microsoft/Phi-3-mini-4k-instruct" and "(a local model" not in body
    assert "[microsoft/Phi-3-mini-4k-instruct](https://huggingface.co/microsoft/Phi-3-mini-4k-instruct)" in body


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed: a connection is refused at once


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_push_without_network_is_one_sentence_at_once_and_the_run_is_untouched(tiny_run, tmp_path):
    import time

    from phinetune.models import hub

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(HF_TOKEN="hf_test", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf-home"))
    before = _tree(tiny_run)
    hub.hub_reachable.cache_clear()  # the probe's answer is kept per process: this one must ask the closed port
    try:
        start = time.monotonic()
        proc = cli_here("push", str(tiny_run), "me/riddles", "--merged", env=env, check=False)
        seconds = time.monotonic() - start
    finally:
        hub.hub_reachable.cache_clear()
    said = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert (
        f"error: cannot reach the Hugging Face Hub at {env['HF_ENDPOINT']} to push to me/riddles: nothing was uploaded"
        in said
    )
    assert said.count("error:") == 1 and f"{tiny_run} is unchanged; run the same command again" in said
    assert (
        seconds < hub.PROBE_TIMEOUT + 5
    )  # refused at once (no retries, and the merge was not started); bound for a loaded machine
    assert _tree(tiny_run) == before


def test_a_connection_lost_during_the_upload_is_one_sentence(tmp_path, monkeypatch):
    """After the probe answered: the client's connection error (httpx or httpx2, whichever huggingface_hub uses)."""
    from huggingface_hub import constants

    from phinetune.errors import PhinetuneError
    from phinetune.export import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    (tmp_path / "README.md").write_text("card")
    with pytest.raises(
        PhinetuneError,
        match=r"upload to me/riddles failed \(http://127.0.0.1:\d+\): .*; the run folder is unchanged: "
        "run the same command again to retry",
    ):
        hub._upload(tmp_path, "me/riddles", private=False, token="hf_test")
