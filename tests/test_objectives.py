"""Every train.objective through the one loop: checkpoints ranked by train.keep with the objective's own evaluation.

The recipe once ranked checkpoints with SFT's evaluation whatever the objective, so `train.objective=dpo` with
`train.keep=[eval_loss]` crashed on the preference rows (an IndexError in the loss) at the first checkpoint that
came without an evaluation of its own.
"""

from __future__ import annotations

import inspect
import json
import math
import typing

import pytest

from phinetune.config import load_config
from phinetune.config.schema import TrainConfig
from phinetune.errors import ConfigError
from phinetune.runs.checkpoints import best_checkpoint, checkpoint_scores, pick_checkpoint
from phinetune.runs.run_dir import RunDir
from phinetune.train.loop import Objective
from phinetune.train.objectives import NAMES, objective
from phinetune.train.recipe import train

PAIRS = ["data.train=builtin:riddles_preferences", "data.limit=12", "data.eval_size=4", "train.batch_size=4"]
DATA = {
    "sft": ["data.limit=16", "data.eval_size=4"],
    "dpo": PAIRS,
    "ipo": PAIRS,
    "orpo": PAIRS,
    "simpo": PAIRS,
    "grpo": [
        "data.train=builtin:riddles_qa",
        "data.limit=8",
        "data.eval_size=2",
        "train.batch_size=2",
        "grpo.group_size=2",
        "grpo.max_completion_length=4",
    ],
}
# Every checkpoint saved, none evaluated on its own (eval_every beyond the run), only the newest kept besides the best.
KEEP = [
    "train.max_steps=3",
    "train.save_every=1",
    "train.keep_checkpoints=1",
    "train.eval_every=100",
    "train.recall_check=0",
    "adapter.dropout=0",
]


def kto_file(tmp_path) -> str:
    """The bundled pairs as KTO's unpaired rows: each chosen reply desirable, each rejected one not."""
    from phinetune.data.readers import builtin_path

    rows = [json.loads(line) for line in builtin_path("riddles_preferences").read_text().splitlines()[:6]]
    path = tmp_path / "kto.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}) + "\n"
            for r in rows
            for k in ("chosen", "rejected")
        )
    )
    return str(path)


def overrides(name: str, tmp_path) -> list[str]:
    data = DATA.get(name) or [f"data.train={kto_file(tmp_path)}", "data.eval_size=4", "train.batch_size=4"]
    return [f"train.objective={name}", *data, *KEEP]


def test_the_registry_serves_every_objective_the_config_accepts_behind_the_protocol():
    assert list(NAMES) == list(typing.get_args(TrainConfig.model_fields["objective"].annotation))
    methods = [m for m in vars(Objective) if not m.startswith("_") and callable(getattr(Objective, m))]
    assert methods == ["load_data", "rows", "begin", "step", "evaluate", "eval_metrics"]
    for name in NAMES:
        goal = objective(name)
        assert goal.name == name and goal.eval_key in ("eval_loss", "eval_reward")
        for m in methods:  # the protocol's parameters, in its order (a bound method has no self)
            protocol = list(inspect.signature(getattr(Objective, m)).parameters)[1:]
            assert list(inspect.signature(getattr(goal, m)).parameters) == protocol, (name, m)
        load_config(None, [f"train.objective={name}", f"train.keep=[{goal.eval_key}]"])  # its own evaluation ranks


@pytest.mark.parametrize(
    "name,refused,own",
    [("grpo", "eval_loss", "eval_reward"), ("sft", "eval_reward", "eval_loss"), ("dpo", "eval_reward", "eval_loss")],
)
def test_keep_by_an_evaluation_the_objective_does_not_make_is_refused(name, refused, own):
    with pytest.raises(
        ConfigError,
        match=rf"train.keep names {refused}, which train.objective={name} does not "
        rf"measure: its evaluation is {own}",
    ):
        load_config(None, [f"train.objective={name}", f"train.keep=[{refused}]"])


def test_dpo_ranks_checkpoints_by_its_own_eval_loss(tiny_cfg, tmp_path):
    """The regression: DPO + train.keep=[eval_loss], a checkpoint at step 1 between evaluations (scored there and
    then), at step 2 with one (its value reused), and at the end."""
    keep = ["train.eval_every=2", "train.keep_checkpoints=3", "train.keep=[eval_loss]"]
    cfg = tiny_cfg(*overrides("dpo", tmp_path), *keep)
    result = train(cfg)
    run = RunDir(result.run.path)
    logged = {m["step"]: m["eval_loss"] for m in run.read_metrics() if "eval_loss" in m}
    assert sorted(logged) == [0, 1, 2, 3]
    # LoRA B starts at 0, so the policy is its reference: DPO's loss is ln 2 per pair (SFT's: ~ln 1024 per token).
    assert logged[0] == pytest.approx(math.log(2), abs=1e-6)
    scores = {step: checkpoint_scores(path) for step, path in run.checkpoint_dirs()}
    assert scores == {s: {"eval_loss": pytest.approx(logged[s])} for s in (1, 2, 3)}
    assert all(v < 2 for v in logged.values()), logged


# The slow lane runs every objective here; in the fast lane, DPO's run is the regression test above.
SLOW = ("dpo", "ipo", "orpo", "simpo", "kto")


@pytest.mark.parametrize("name", ["sft", "grpo", *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW)])
def test_keep_ranks_every_objectives_checkpoints_by_its_evaluation(tiny_cfg, tmp_path, name):
    goal = objective(name)
    result = train(tiny_cfg(*overrides(name, tmp_path), f"train.keep=[{goal.eval_key}]"))
    run = RunDir(result.run.path)
    # Each step's evaluation as metrics.jsonl logged it: steps 1 and 2 when their checkpoint was scored, 3 at the end.
    logged = {m["step"]: m[goal.eval_key] for m in run.read_metrics() if goal.eval_key in m}
    assert sorted(logged) == [0, 1, 2, 3]
    assert logged[3] == pytest.approx(result.final_eval_loss)
    # What train.keep should keep: the newest, and the best of steps 1-3 (lowest loss, highest reward; earliest on a tie).
    sign = -1 if goal.eval_key == "eval_reward" else 1
    best = min((sign * logged[s], s) for s in (1, 2, 3))[1]
    kept = run.checkpoint_dirs()
    assert [s for s, _ in kept] == sorted({3, best})
    for step, path in kept:
        assert checkpoint_scores(path) == {goal.eval_key: pytest.approx(logged[step])}
    assert best_checkpoint(kept, goal.eval_key).name == pick_checkpoint(run, "best").name == f"step-{best}"
