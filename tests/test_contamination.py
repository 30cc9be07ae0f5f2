"""Contamination: planted copies of benchmark items (exact, reworded, options reordered) are found at their file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, cli_here
from phinetune.data.readers import Record, read_records
from phinetune.eval import contamination
from phinetune.eval.tasks import TASKS, load_docs

EVALSETS = ROOT / "tests" / "fixtures" / "evalsets"
NAMES = ("arc_easy", "hellaswag", "piqa", "winogrande")

# Written out by hand from the fixture files (not derived from our item-text code).
ARC1_Q = "Which statement best explains why photosynthesis is the foundation of most food webs?"
ARC1_OPTS = [
    "Sunlight is the source of energy for nearly all ecosystems.",
    "Most ecosystems are found on land instead of in water.",
    "Carbon dioxide is more available than other gases.",
    "The producers in all ecosystems are plants.",
]
# The same item reworded: no run of 13 words survives (every few words one is changed), the content stays.
ARC1_REWORDED = (
    "Which statement best explains why photosynthesis is the basis of most food webs? "
    "Sunlight is the source of energy for almost all ecosystems. Most ecosystems are found on land rather than in water. "
    "Carbon dioxide is more common than other gases. The producers in every ecosystem are plants."
)
PIQA1_GOAL = "How do I ready a guinea pig cage for it's new occupants?"
WINO1 = "Sarah was a much better surgeon than Maria so Maria always got the easier cases."


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def planted_file(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """The bundled riddles with four planted benchmark copies; returns the file and the line of each plant."""
    rows = [r.sample for r in read_records("builtin:riddles")][:30]
    piqa = json.loads((EVALSETS / "piqa" / "valid.jsonl").read_text().splitlines()[0])
    plants = {
        "exact": chat(
            f"{ARC1_Q}\nA. {ARC1_OPTS[0]}\nB. {ARC1_OPTS[1]}\nC. {ARC1_OPTS[2]}\nD. {ARC1_OPTS[3]}", ARC1_OPTS[0]
        ),
        "reworded": chat(ARC1_REWORDED, "The first one."),
        # PIQA's two solutions in the opposite order, shouting, different punctuation: the goal's 13-grams still match.
        "reordered": chat(f"{PIQA1_GOAL.upper()} (1) {piqa['sol2']} (2) {piqa['sol1']}", "(2)"),
        "winogrande": chat("Fill in: " + WINO1, "Maria"),
    }
    lines, at = [], {}
    for k, row in enumerate(rows):
        lines.append(row)
        if k % 7 == 3 and plants:
            name, plant = plants.popitem()
            lines.append(plant)
            at[name] = len(lines)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path, at


@pytest.fixture(scope="module")
def docs():
    return {name: load_docs(TASKS[name], EVALSETS) for name in NAMES}


def test_planted_overlaps_are_found_with_file_and_line(tmp_path, docs):
    path, at = planted_file(tmp_path)
    records = read_records(str(path))
    result = contamination.check(records, docs)
    found = {(h.task, h.item, h.sample): h.method for h in result.hits}
    assert found == {
        ("arc_easy", 1, f"{path}:{at['exact']}"): "13-gram",
        ("arc_easy", 1, f"{path}:{at['reworded']}"): "minhash",
        ("piqa", 1, f"{path}:{at['reordered']}"): "13-gram",
        ("winogrande", 1, f"{path}:{at['winogrande']}"): "13-gram",
        # WinoGrande's twin (item 2 differs in one word, "harder") shares its first 13 words: by the
        # 13-gram convention, training on one twin contaminates the other.
        ("winogrande", 2, f"{path}:{at['winogrande']}"): "13-gram",
    }
    per = result.per_task()
    assert per["arc_easy"] == {"items": 8, "contaminated": 1, "samples": 2, "source": ""}
    assert per["hellaswag"]["contaminated"] == 0 and per["piqa"]["contaminated"] == 1
    assert result.contaminated("arc_easy") == {0}


def test_clean_riddles_overlap_nothing(docs):
    assert contamination.check(read_records("builtin:riddles"), docs).hits == []


def test_short_unrelated_overlap_is_not_a_hit(docs):
    # Shares 12 consecutive words with ARC item 1, one short of an n-gram, and is otherwise unrelated.
    text = (
        "which statement best explains why photosynthesis is the foundation of most food? Nobody knows, said the cat."
    )
    assert contamination.check([Record(chat(text, "ok"), "x:1")], {"arc_easy": docs["arc_easy"]}).hits == []


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    st.sampled_from(["upper", "lower", "punct", "spaces"]),
    st.text(alphabet="abc xyz", max_size=40),
    st.text(alphabet="abc xyz", max_size=40),
)
def test_copy_is_found_whatever_case_punctuation_and_surroundings(docs, how, before, after):
    item = f"{WINO1}"
    variant = {
        "upper": item.upper(),
        "lower": item.lower(),
        "punct": item.replace(" ", ", ").replace(".", "!"),
        "spaces": item.replace(" ", "  \n "),
    }[how]
    hits = contamination.check(
        [Record({"text": f"{before} {variant} {after}"}, "x:1")], {"winogrande": docs["winogrande"]}
    ).hits
    assert [(h.item, h.method) for h in hits] == [(1, "13-gram"), (2, "13-gram")]  # item 2: its twin (see above)


@pytest.mark.slow
def test_data_inspect_against_reports_counts_and_lines(tmp_path):
    path, at = planted_file(tmp_path)
    proc = cli_here(
        "data",
        "inspect",
        str(path),
        "--model",
        "tiny-phi3",
        "--against",
        ",".join(NAMES),
        "--against-dir",
        str(EVALSETS),
        "--out",
        str(tmp_path / "out"),
    )
    assert f"{path}:{at['exact']}: arc_easy item 1 (13-gram" in proc.stdout
    assert f"{path}:{at['reworded']}: arc_easy item 1 (minhash" in proc.stdout
    saved = json.loads((tmp_path / "out" / "benchmark-contamination.json").read_text())
    assert saved["per_task"]["arc_easy"]["contaminated"] == 1 and saved["per_task"]["arc_easy"]["samples"] == 2
    assert saved["per_task"]["piqa"]["contaminated"] == 1 and saved["per_task"]["winogrande"]["contaminated"] == 2
    assert saved["per_task"]["hellaswag"]["contaminated"] == 0
    assert saved["per_task"]["piqa"]["source"].endswith("piqa/valid.jsonl")


def test_unknown_task_is_one_line_error(tmp_path):
    proc = cli_here(
        "data",
        "inspect",
        "builtin:riddles",
        "--model",
        "tiny-phi3",
        "--against",
        "mmlu",
        "--out",
        str(tmp_path),
        check=False,
    )
    assert proc.returncode == 2 and "unknown eval task 'mmlu'" in proc.stdout and "Traceback" not in proc.stderr


def test_train_preflight_refuses_when_asked(tmp_path, tiny_cfg):
    from phinetune.errors import PreflightError
    from phinetune.eval.checkpoints import training_hooks
    from phinetune.train.recipe import train

    path, _ = planted_file(tmp_path)
    cfg = tiny_cfg(
        f"data.train={path}",
        "data.limit=null",
        "data.eval_size=null",
        f"data.eval={held_out(tmp_path)}",
        "eval.tasks=[arc_easy,piqa]",
        f"eval.data_dir={EVALSETS}",
        "eval.contamination=refuse",
    )
    with pytest.raises(PreflightError, match="3 training sample.s. overlap benchmark items"):
        train(cfg, hooks=training_hooks(cfg))
    saved = json.loads((Path(cfg.output.dir) / "contamination.json").read_text())
    assert saved["per_task"]["arc_easy"]["samples"] == 2 and saved["per_task"]["piqa"]["contaminated"] == 1


@pytest.mark.slow
def test_train_warns_and_eval_scores_the_clean_items(tmp_path):
    """Train on planted data with eval.tasks set, then `eval` marks the contaminated items and --decontaminate drops them."""
    path, _ = planted_file(tmp_path)
    run = tmp_path / "run"
    proc = cli_here(
        "train",
        "model.name=tiny-phi3",
        f"data.train={path}",
        "data.eval_size=null",
        f"data.eval={held_out(tmp_path)}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.recall_check=0",
        "eval.tasks=[arc_easy,winogrande]",
        f"eval.data_dir={EVALSETS}",
        f"output.dir={run}",
    )
    assert "overlap benchmark items of eval.tasks" in proc.stdout and (run / "contamination.json").exists()
    winogrande = 2  # the plant and its twin
    base = ["eval", str(run), "--tasks", "arc_easy,winogrande", "--data-dir", str(EVALSETS)]
    cli_here(*base)
    rows = {r["task"]: r for r in json.loads((run / "eval.json").read_text())["rows"]}
    assert rows["arc_easy"]["n"] == 8 and rows["winogrande"]["n"] == 6
    assert rows["winogrande"]["contaminated"] == winogrande
    arc_dirty = rows["arc_easy"]["contaminated"]
    assert arc_dirty == 1
    cli_here(*base, "--decontaminate")
    saved = json.loads((run / "eval.json").read_text())
    rows = {r["task"]: r for r in saved["rows"]}
    assert (
        saved["decontaminated"] and rows["arc_easy"]["n"] == 8 - arc_dirty and rows["winogrande"]["n"] == 6 - winogrande
    )
    assert rows["arc_easy"]["contaminated"] == 0 and [i["item"] for i in saved["base"]["arc_easy"]["items"]][0] == 2


def held_out(tmp_path: Path) -> Path:
    """A separate eval file (the last riddles), so every planted row is training data."""
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r.sample) + "\n" for r in read_records("builtin:riddles")[-4:]))
    return path
