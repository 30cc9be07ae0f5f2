"""config/explain.py: a config error names where the bad value was written, the same way for every config.

The three sources of a config: the run config (config/load.py), the synth config (synth/config.py) and a verb's
options that fill a config section (from_flags: data inspect's data.* flags, judge's teacher flags). A file's key
is `FILE:LINE` (the lines counted here by hand from the text written), an override `command line (key=value)`,
an option `command line (--flag value)`; then the key as the user wrote it, what is wrong and the value given.
"""

from __future__ import annotations

import re

import pytest

from conftest import cli_here
from phinetune.config import load_config
from phinetune.config.explain import from_flags
from phinetune.config.schema import DataConfig
from phinetune.data.inspect import DATA_FLAGS
from phinetune.errors import ConfigError
from phinetune.eval.judge import JUDGE_FLAGS
from phinetune.synth.config import load_synth_config
from phinetune.teachers.config import TeacherConfig

# ORIGIN: 'KEY': what is wrong (got VALUE)
LINE = re.compile(r"^(?P<origin>\S+:\d+|command line \([^)]+\)): '(?P<key>[^']+)': (?P<what>.+) \(got (?P<got>.+)\)$")

RUN = "model:\n  name: tiny-phi3\ntrain:\n  epochs: 1\n  batch_size: many\n"  # train.batch_size on line 5
SYNTH = "seeds:\n  path: builtin:riddles\nteacher:\n  model: m\n  concurrency: many\nstages:\n  answer: {kind: assistant}\n"  # line 5


def explained(load, *args) -> str:
    with pytest.raises(ConfigError) as err:
        load(*args)
    return str(err.value)


def parts(message: str) -> dict:
    found = LINE.match(message)
    assert found, message
    return found.groupdict()


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "load,name,text,key",
    [
        (load_config, "run.yaml", RUN, "train.batch_size"),
        (load_synth_config, "synth.yaml", SYNTH, "teacher.concurrency"),
    ],
)
def test_a_bad_value_in_a_file_names_its_file_and_line(tmp_path, load, name, text, key):
    path = write(tmp_path, name, text)
    said = parts(explained(load, path))
    assert said["origin"] == f"{path}:5" and said["key"] == key and said["got"] == "'many'"


@pytest.mark.parametrize(
    "load,name,text,key",
    [(load_config, "run.yaml", RUN, "train.epochs"), (load_synth_config, "synth.yaml", SYNTH, "teacher.concurrency")],
)
def test_a_bad_override_names_the_command_line(tmp_path, load, name, text, key):
    fixed = text.replace("many", "2")
    said = parts(explained(load, write(tmp_path, name, fixed), [f"{key}=-3"]))
    assert said["origin"] == f"command line ({key}=-3)" and said["key"] == key and said["got"] == "-3"


def test_a_bad_option_names_the_command_line_as_an_override_does():
    said = parts(explained(lambda: from_flags(TeacherConfig, JUDGE_FLAGS, model="m", concurrency=0)))
    assert said == {
        "origin": "command line (--concurrency 0)",
        "key": "--concurrency",
        "what": "Input should be greater than or equal to 1",
        "got": "0",
    }
    said = parts(explained(lambda: from_flags(DataConfig, DATA_FLAGS, train="builtin:riddles", mask="everything")))
    assert (
        said["origin"] == "command line (--mask everything)"
        and said["key"] == "--mask"
        and "'last_assistant'" in said["what"]
    )


def test_every_source_names_an_unknown_key_by_its_line_with_a_hint(tmp_path):
    """In a synth stage too: pydantic's location carries the stage's kind, which the file does not."""
    run = write(tmp_path, "run.yaml", "train:\n  learnig_rate: 1e-3\n")
    assert (
        explained(load_config, run) == f"{run}:2: unknown key 'train.learnig_rate'; did you mean 'train.learning_rate'?"
    )
    synth = write(
        tmp_path,
        "synth.yaml",
        SYNTH.replace("many", "2").replace("{kind: assistant}", "\n    kind: assistant\n    promt: x"),
    )
    assert (
        explained(load_synth_config, synth)
        == f"{synth}:9: unknown key 'stages.answer.promt'; did you mean 'stages.answer.prompt'?"
    )
    said = explained(load_synth_config, synth, ["teacher.concurency=3"])
    assert said.startswith(
        "command line (teacher.concurency=3): unknown key 'teacher.concurency'; did you mean 'teacher.concurrency'?"
    )


def test_the_command_prints_an_option_error_as_one_sentence(tmp_path):
    proc = cli_here(
        "data",
        "inspect",
        "builtin:riddles",
        "--model",
        "tiny-phi3",
        "--max-length",
        "4",
        "--out",
        str(tmp_path / "o"),
        check=False,
    )
    said = " ".join(proc.stdout.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert said.startswith(
        "error: command line (--max-length 4): '--max-length': Input should be greater than or equal to "
    )
    assert not (tmp_path / "o").exists()
