"""The preference synth recipe: two sampled replies per prompt, a judge's pick, journaled, resumable, read by DPO as is."""

import json

import pytest

from conftest import ROOT
from openai_server import FakeOpenAI
from phinetune.data.preference import read_preferences
from phinetune.synth.config import load_synth_config
from phinetune.synth.run import PREFERENCES, run_synth

RECIPE = str(ROOT / "configs" / "synth" / "riddles_preferences.yaml")


def _overrides(srv, out, *extra):
    return [f"teacher.base_url={srv.base_url}", f"output.dir={out}", "teacher.concurrency=2", "seeds.limit=6", *extra]


def test_pairs_are_judged_journaled_resumed_and_read_by_dpo(tmp_path, tiny_phi3):
    out = tmp_path / "out"
    with FakeOpenAI(failures=[503]) as srv:
        cfg = load_synth_config(RECIPE, _overrides(srv, out))
        first = run_synth(cfg)
        again = run_synth(cfg)
    assert first.calls_made == 6 * 3  # two replies + one verdict per riddle
    assert again.calls_made == 0 and again.calls_from_journal == 18
    rows = [json.loads(line) for line in (out / PREFERENCES).read_text().splitlines()]
    assert len(rows) == 6
    # The fake judge prefers the longer reply: whatever order it was shown, the file must say so.
    assert all(len(r["chosen"][0]["content"]) >= len(r["rejected"][0]["content"]) for r in rows)
    assert any(len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"]) for r in rows)
    from phinetune.synth.stages import judge_order

    assert len({judge_order(cfg, r["id"]) for r in rows}) == 2, "both presentation orders occur"
    records = read_preferences(str(out / PREFERENCES), "pairs")
    assert [r.chosen for r in records] == [r["chosen"][0]["content"] for r in rows]

    from phinetune.config import load_config
    from phinetune.train.objectives.preference import load_data

    _, tok = tiny_phi3
    data = load_data(
        load_config(None, ["train.objective=dpo", f"data.train={out / PREFERENCES}", "data.eval_size=1"]),
        tok,
        "<|end|>",
    )
    assert len(data.pairs) + len(data.eval_pairs) == 6


def test_unclear_verdicts_and_identical_replies_are_dropped_and_counted(tmp_path, monkeypatch):
    import openai_server

    real = openai_server.reply_for
    monkeypatch.setattr(
        openai_server,
        "reply_for",
        lambda body, *judge: (
            ("judge", "Both A and B are fine.") if "Reply A:" in body["messages"][-1]["content"] else real(body, *judge)
        ),
    )
    with FakeOpenAI() as srv:
        run_synth(load_synth_config(RECIPE, _overrides(srv, tmp_path, "seeds.limit=3")))
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["stages"]["judge"]["removed"] == {"judge_unclear": 3}
    assert not (tmp_path / PREFERENCES).exists() or not (tmp_path / PREFERENCES).read_text().strip()


def test_a_preference_recipe_must_end_with_pairs_then_judge(tmp_path):
    from phinetune.errors import ConfigError

    with pytest.raises(ConfigError, match="ends with one pairs stage then one judge stage"):
        load_synth_config(RECIPE, ["stages.judge.kind=assistant", "stages.judge.prompt=null"])
