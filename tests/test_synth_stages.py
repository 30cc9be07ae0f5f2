"""Stages: seeds read from any reader format; calls are planned deterministically (what resuming relies on)."""

import pytest

from conftest import ROOT
from phinetune.errors import DataError
from phinetune.synth.config import SeedsConfig, load_synth_config
from phinetune.synth.stages import STAGES, Item, read_seeds, render_conversation, seed_items


def test_seeds_from_bundled_conversations_take_the_first_user_turn():
    seeds, skipped = read_seeds(SeedsConfig(path="builtin:riddles"))
    assert len(seeds) == 64 and skipped == 0 and seeds[0] == "What has keys but can't open a single lock?"


def test_seed_field_errors_name_the_row_and_suggest(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("Question,answer\nWhat runs but never walks?,river\n,empty\n")
    with pytest.raises(DataError, match=r"s.csv:row 1: no field 'question'.*did you mean 'Question'"):
        read_seeds(SeedsConfig(path=str(path), field="question"))
    seeds, skipped = read_seeds(SeedsConfig(path=str(path), field="Question"))
    assert seeds == ["What runs but never walks?"] and skipped == 1  # the empty cell is counted, not kept


def test_auto_field_refuses_to_guess(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"riddle": "What runs?"}\n')
    with pytest.raises(DataError, match=r"s.jsonl:1: cannot tell which field.*set seeds.field"):
        read_seeds(SeedsConfig(path=str(path)))


def plan(cfg, name, items, seeds):
    stage = cfg.stages[name]
    return STAGES[stage.kind][0](stage, (cfg, name, seeds), items)


def test_plans_are_deterministic_and_depend_on_the_seed():
    seeds = [f"Riddle number {i}?" for i in range(30)]
    cfg = load_synth_config(
        ROOT / "configs/synth/riddles.yaml", ["stages.riddles.calls=5", "teacher.base_url=http://x/v1"]
    )
    a, b = plan(cfg, "riddles", [], seeds), plan(cfg, "riddles", [], seeds)
    assert [c.key for _, c in a] == [c.key for _, c in b] and len({c.key for _, c in a}) == 5
    assert all(c.messages[0]["content"].count("Riddle number") == 10 for _, c in a)
    other = load_synth_config(
        ROOT / "configs/synth/riddles.yaml", ["stages.riddles.calls=5", "teacher.base_url=http://x/v1", "seed=1"]
    )
    assert [c.key for _, c in plan(other, "riddles", [], seeds)] != [c.key for _, c in a]


def test_assistant_prompt_wraps_only_what_the_teacher_sees():
    cfg = load_synth_config(ROOT / "configs/synth/riddles.yaml", ["teacher.system=Be brief."])
    items = seed_items(["What has a neck but no head?"])
    ((_, call),) = plan(cfg, "answer", items, [])
    assert call.messages[0] == {"role": "system", "content": "Be brief."}
    assert call.messages[1]["content"].startswith("What has a neck but no head?\n\nReason it through")
    assert items[0].turns == ["What has a neck but no head?"]
    ((_, follow),) = plan(cfg, "followup", [Item("x", "seed", ["Q?", "A."])], [])
    assert "user: Q?\nassistant: A." in follow.messages[-1]["content"]
    assert render_conversation(Item("x", "seed", ["Q?", "A."])) == "user: Q?\nassistant: A."
