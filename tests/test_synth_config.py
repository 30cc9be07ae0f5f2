"""The synth config: shipped examples validate; typos, bad stage orders and prompts fail with one clear line."""

import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from phinetune.errors import ConfigError
from phinetune.synth.config import load_synth_config

SHIPPED = sorted((ROOT / "configs" / "synth").glob("*.yaml"))

MINIMAL = """
seeds: {path: builtin:riddles}
teacher: {model: m, base_url: "http://127.0.0.1:1/v1"}
stages:
  answer: {kind: assistant}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "synth.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_validate(path):
    cfg = load_synth_config(path)
    kinds = [s.kind for s in cfg.stages.values()]
    assert kinds[-1] == "assistant" or kinds[-2:] == ["pairs", "judge"]  # conversations, or preference pairs


def test_riddles_recipe_has_the_five_stages():
    cfg = load_synth_config(ROOT / "configs/synth/riddles.yaml")
    assert [s.kind for s in cfg.stages.values()] == ["expand", "clean", "assistant", "user", "assistant"]
    assert cfg.stages["riddles"].calls == 300 and cfg.stages["riddles"].examples == 10
    assert cfg.sampling_for(cfg.stages["riddles"]).temperature == 1.0  # stage override
    assert cfg.sampling_for(cfg.stages["answer"]).temperature == 0.7  # top-level default


def test_overrides_reach_named_stages(tmp_path):
    cfg = load_synth_config(ROOT / "configs/synth/riddles.yaml", ["stages.riddles.calls=3", "teacher.concurrency=2"])
    assert cfg.stages["riddles"].calls == 3 and cfg.teacher.concurrency == 2


@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.answer.promt=x", "did you mean 'stages.answer.prompt'"),
        ("teacher.concurency=3", "did you mean 'teacher.concurrency'"),
        ("sampling.temprature=1", "did you mean 'sampling.temperature'"),
    ],
)
def test_unknown_keys_suggest_the_closest(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_synth_config(write(tmp_path, MINIMAL), [override])


@pytest.mark.parametrize(
    "stages, expected",
    [
        ("{a: {kind: user, prompt: '{conversation}'}}", "must alternate assistant, user"),
        ("{a: {kind: assistant}, b: {kind: user, prompt: '{conversation}'}}", "end with assistant"),
        ("{a: {kind: assistant}, c: {kind: clean}}", "must come before the turn stages"),
        ("{a: {kind: assistant, prompt: 'no placeholder'}}", "must contain {message}"),
        ("{a: {kind: assistant, prompt: '{message} {answer}'}}", "unknown placeholder"),
        ("{a: {kind: expand, calls: 1, prompt: 'x'}, b: {kind: assistant}}", "must contain {examples}"),
        ("{a: {kind: answer}}", "'stages.a.kind' must be one of"),
        ("{a: {prompt: x}}", "'stages.a' has no 'kind'"),
    ],
)
def test_bad_stages_are_refused(tmp_path, stages, expected):
    text = MINIMAL.split("stages:")[0] + f"stages: {stages}\n"
    with pytest.raises(ConfigError, match=expected.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        load_synth_config(write(tmp_path, text))


def test_cli_reports_config_errors_in_one_line(tmp_path):
    proc = run_cli("synth", str(write(tmp_path, MINIMAL)), "stages.answer.promt=x", check=False)
    assert proc.returncode == 2
    assert "did you mean 'stages.answer.prompt'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """The synth config is read by the run config's loader: the same refusal, file and lines."""
    path = write(tmp_path, MINIMAL + "  answer: {kind: assistant, prompt: 'Answer: {message}'}\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"{path}:6: key 'stages.answer' is given twice (first at {path}:5)")
    ):
        load_synth_config(path)
