"""Names that are paths never go to the Hub, and an unreachable Hub costs seconds, not a minute of retries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SRC
from phinetune.errors import PhinetuneError
from phinetune.models.hub import check_model_name, looks_like_path


@pytest.mark.parametrize("name", ["./x", "../x", "/abs/model", "~/models/x", "runs/a/b", "a\\b", "folder/"])
def test_path_shapes_are_never_hub_ids(name):
    assert looks_like_path(name)


def test_owner_slash_name_is_a_path_only_when_the_owner_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("runs/nope") and not looks_like_path("microsoft/phi-2")
    (tmp_path / "runs").mkdir()
    assert looks_like_path("runs/nope") and not looks_like_path("microsoft/phi-2")


@given(st.from_regex(r"[a-z][a-z0-9-]{0,12}/[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_hub_shaped_ids_are_not_paths_here(name):
    """`owner/name` where no folder `owner` exists here (the test's cwd has none of these) is a Hub id."""
    if not Path(name.split("/")[0]).exists():
        assert not looks_like_path(name)


def test_missing_folder_is_one_sentence_listing_the_builtin_models(tmp_path):
    with pytest.raises(PhinetuneError, match=r"could not load model '.*nope': no such folder.*tiny-phi3, tiny-phi2"):
        check_model_name(str(tmp_path / "nope"))


def test_offline_uncached_id_says_what_to_do_and_suggests_the_builtin_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PhinetuneError, match=r"could not load model 'tiny-phi5': did you mean tiny-phi\d\?"):
        check_model_name("tiny-phi5")


@pytest.mark.parametrize(
    "typo,meant",
    [
        ("microsoft/Phi-3.5-mini-instruc", "microsoft/Phi-3.5-mini-instruct"),
        ("microsft/phi-2", "microsoft/phi-2"),
        ("Phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct"),
    ],
)
def test_a_misspelt_phi_id_gets_the_spec_id_it_resembles(typo, meant, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PhinetuneError, match=re.escape(f"could not load model '{typo}': did you mean {meant}?")):
        check_model_name(typo)


def test_an_uncached_id_is_advised_with_hf_download_and_a_missing_folder_comes_first(tmp_path, monkeypatch):
    """`huggingface-cli` is not shipped by huggingface_hub any more: the advice names `hf download`. A name like
    `runs/nope` run from a folder without runs/ may be a Hub id or a mistyped path: both are said, the path first."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PhinetuneError) as err:
        check_model_name("runs/nope")
    message = str(err.value)
    assert message.index(f"there is no folder runs/nope here ({tmp_path})") < message.index(
        "run `hf download runs/nope` on a connected machine"
    )
    assert "huggingface-cli" not in message


def _online_env(tmp_path: Path) -> dict:
    """The environment of a user who never set HF_HUB_OFFLINE, with an empty Hugging Face cache."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    return {
        **env,
        "PYTHONPATH": str(SRC),
        "HF_HOME": str(tmp_path / "hf-home"),
        "PHINETUNE_QUIET": "1",
        "COLUMNS": "200",
    }


def network_wait(proc: subprocess.CompletedProcess) -> float:
    """The seconds a command run through tests/netwait.py spent on the network and asleep (its last stderr line)."""
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("network wait: "), proc.stderr[-2000:]
    return float(last.split()[2])


NETWAIT = Path(__file__).parent / "netwait.py"  # `phinetune ARGS` that reports its network wait
UNCACHED = "phinetune-test/no-such-model"
COMMANDS = [
    (["generate", "runs/nope", "hi"], "runs/nope"),
    (["generate", UNCACHED, "hi"], UNCACHED),
    (["chat", "./nope"], "./nope"),
    (["serve", "/nonexistent/run"], "/nonexistent/run"),
    (["generate", "tiny-phi5", "hi"], "tiny-phi5"),
    (["merge", "runs/nope", "--out", "merged"], "runs/nope"),
    (["train", f"model.name={UNCACHED}", "output.dir=out"], UNCACHED),
    (["data", "inspect", "builtin:riddles", "--model", UNCACHED], UNCACHED),
]


@pytest.mark.parametrize("args,name", COMMANDS, ids=[" ".join(a[:2]) for a, _ in COMMANDS])
def test_no_command_waits_on_the_hub(args, name, tmp_path):
    """Without HF_HUB_OFFLINE (this machine has no route to the Hub; elsewhere the Hub answers 404 quickly).

    What is bounded is the time spent on the network and asleep (name lookups, connects, reads, back-offs), not the
    wall time, which a loaded machine stretches however the command waits."""
    (tmp_path / "runs").mkdir()
    proc = subprocess.run(
        [sys.executable, str(NETWAIT), *args],
        cwd=tmp_path,
        env=_online_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "Traceback" not in out and name in out
    assert "hf download runs/" not in out and "hf download ./" not in out and "huggingface-cli" not in out
    assert network_wait(proc) < 10, out


def test_eval_without_data_dir_fails_fast_when_the_hub_is_unreachable(tiny_run, tmp_path):
    from phinetune.models.hub import hub_reachable

    env = _online_env(tmp_path)
    hub_reachable.cache_clear()
    if subprocess.run(
        [sys.executable, "-c", "from phinetune.models.hub import hub_reachable; raise SystemExit(hub_reachable())"],
        env=env,
    ).returncode:
        pytest.skip("the Hub is reachable from here")
    proc = subprocess.run(
        [sys.executable, str(NETWAIT), "eval", str(tiny_run), "--limit", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and "cannot be reached" in out and "--data-dir" in out, out
    assert (
        network_wait(proc) < 10
    )  # on the network and asleep; loading the run first takes what the machine's load makes it
