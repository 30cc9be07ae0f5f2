"""Preference objectives through the one recipe: references, cached log-probs, logged curves, learning."""

from __future__ import annotations

import math

import pytest

from phinetune.train.objectives.preference import PreferenceState
from phinetune.train.recipe import run_steps, setup, train

PREF = [
    "train.objective=dpo",
    "data.train=builtin:riddles_preferences",
    "data.limit=16",
    "data.eval_size=4",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.eval_every=100",
    "adapter.dropout=0",
    "train.recall_check=0",
]


def _first_loss(loop):
    return loop.run.read_metrics()[0] if loop.run.read_metrics() else None


def test_lora_reference_is_the_adapter_switched_off_and_matches_cached_logps(tiny_cfg, tmp_path):
    loop = setup(tiny_cfg(*PREF))
    assert loop.objective.state == PreferenceState("adapter_off", ref_model=None)  # no second copy of the weights
    run_steps(loop)
    curve = [m for m in loop.run.read_metrics() if "loss" in m]
    assert curve[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), "LoRA B starts at 0: policy == reference"
    assert curve[0]["margin"] == pytest.approx(0, abs=1e-6)
    assert {"rewards_chosen", "rewards_rejected", "margin", "accuracy"} <= set(curve[-1])
    from phinetune.charts import render_all

    charts = render_all(loop.run.read_metrics())  # the report page draws these
    assert {"rewards", "accuracy"} <= set(charts) and charts["rewards"][1][:4] == b"\x89PNG"

    cached = setup(tiny_cfg(*PREF, "preference.reference=cached", f"output.dir={tmp_path / 'cached'}"))
    assert cached.run.reference_logps.exists()
    run_steps(cached)
    other = [m for m in cached.run.read_metrics() if "loss" in m]
    for a, b in zip(curve, other):
        for key in ("loss", "rewards_chosen", "rewards_rejected"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("reference", [pytest.param("copy", marks=pytest.mark.slow), "cached"])
def test_full_fine_tuning_reference_is_the_starting_model(tiny_cfg, tmp_path, reference):
    loop = setup(
        tiny_cfg(
            *PREF,
            "adapter.method=full",
            "adapter.modules_to_save=[]",
            "train.learning_rate=1e-3",
            f"preference.reference={reference}",
            "train.max_steps=2",
        )
    )
    run_steps(loop)
    curve = [m for m in loop.run.read_metrics() if "loss" in m]
    assert curve[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert curve[1]["loss"] != pytest.approx(math.log(2), abs=1e-4), (
        "after a step the policy has moved from its reference"
    )


@pytest.mark.parametrize(
    "objective",
    [
        "dpo",
        pytest.param("ipo", marks=pytest.mark.slow),
        pytest.param("simpo", marks=pytest.mark.slow),
        pytest.param("orpo", marks=pytest.mark.slow),
    ],
)
def test_objectives_learn_to_prefer_the_chosen_reply(tiny_cfg, tmp_path, objective):
    """Train and evaluate on the same 8 pairs: the preference loss must fall and the margin turn positive."""
    data = tmp_path / "pairs.jsonl"
    from phinetune.data.readers import builtin_path

    data.write_text("".join(builtin_path("riddles_preferences").read_text().splitlines(True)[:8]))
    result = train(
        tiny_cfg(
            f"train.objective={objective}",
            f"data.train={data}",
            f"data.eval={data}",
            "data.eval_size=null",
            "train.batch_size=8",
            "train.max_steps=8",
            "train.learning_rate=5e-3",
            "train.warmup_ratio=0",
            "adapter.dropout=0",
            "train.recall_check=0",
            "train.eval_every=100",
            "preference.beta=0.5",
        )
    )
    assert result.final_eval_loss < result.first_eval_loss - 0.02, (result.first_eval_loss, result.final_eval_loss)
    last = [m for m in result.run.read_metrics() if "margin" in m][-1]
    assert last["margin"] > 0 and last["accuracy"] >= 0.5


@pytest.mark.slow
def test_kto_trains_on_unpaired_labels(tiny_cfg, tmp_path):
    import json

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
    result = train(
        tiny_cfg(
            "train.objective=kto",
            f"data.train={path}",
            f"data.eval={path}",
            "data.eval_size=null",
            "train.batch_size=6",
            "train.max_steps=4",
            "train.recall_check=0",
            "adapter.dropout=0",
            "train.eval_every=100",
        )
    )
    curve = [m for m in result.run.read_metrics() if "loss" in m]
    assert curve[0]["loss"] == pytest.approx(0.5, abs=1e-5), "KTO at the reference: 1 - sigmoid(0) per sample"
    assert "rewards_chosen" in curve[-1] and "rewards_rejected" in curve[-1]
    assert result.final_eval_loss < result.first_eval_loss


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_for_dpo(tiny_cfg, tmp_path):
    """2-process DDP over gloo (global batch = 2 x 2 pairs) equals 1 process with grad_accum=2, step for step."""
    import json

    from conftest import cli_here
    from phinetune.config import dump_config

    common = [*PREF, "train.batch_size=2", "train.max_steps=3", "train.eval_every=2"]
    one = train(tiny_cfg(*common, "train.grad_accum=2", f"output.dir={tmp_path / 'one'}"))
    two_cfg = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*common, "train.grad_accum=1", f"output.dir={tmp_path / 'two'}"), two_cfg)
    cli_here("train", str(two_cfg), "--nproc", "2")  # the launcher in this process; the 2 ranks are real processes

    keys = ("loss", "eval_loss", "grad_norm", "lr", "margin", "rewards_chosen", "rewards_rejected", "accuracy")
    curve = lambda run: [
        (r["step"], *(r.get(k) for k in keys))
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ]  # noqa: E731
    expected, got = curve(one.run.path), curve(tmp_path / "two")
    assert [r[0] for r in got] == [r[0] for r in expected] and len(got) >= 5
    for a, b in zip(expected, got):
        assert [x is None for x in b] == [x is None for x in a], f"step {a[0]}: {a} vs {b}"
        assert [x for x in b[1:] if x is not None] == pytest.approx(
            [x for x in a[1:] if x is not None], rel=2e-5, abs=2e-5
        ), f"step {a[0]}: 1 process {a}, 2 processes {b}"


@pytest.mark.slow
def test_two_processes_evaluate_kto_on_an_uneven_eval_share(tiny_cfg, tmp_path, monkeypatch):
    """3 eval samples over 2 processes, one per batch: rank 0 evaluates 2 batches, rank 1 one. KTO's KL estimate
    was an all-reduce per batch, so rank 1's next collective answered rank 0's second one (wrong values) and a
    rank then waited for a partner that never came. In evaluation it is now each batch's own estimate."""
    import json

    from conftest import run_cli
    from phinetune.config import dump_config
    from phinetune.data.readers import builtin_path

    monkeypatch.setenv("PHINETUNE_DIST_TIMEOUT", "90")  # a hang fails the test instead of holding it for 10 minutes
    rows = [json.loads(line) for line in builtin_path("riddles_preferences").read_text().splitlines()[:4]]
    samples = [
        json.dumps({"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}) + "\n"
        for r in rows
        for k in ("chosen", "rejected")
    ]
    (tmp_path / "train.jsonl").write_text("".join(samples))
    (tmp_path / "eval.jsonl").write_text("".join(samples[:3]))
    common = [
        "train.objective=kto",
        f"data.train={tmp_path / 'train.jsonl'}",
        f"data.eval={tmp_path / 'eval.jsonl'}",
        "data.eval_size=null",
        "train.batch_size=1",
        "train.max_steps=1",
        "train.recall_check=0",
        "adapter.dropout=0",
    ]
    one = train(tiny_cfg(*common, "train.grad_accum=2", f"output.dir={tmp_path / 'one'}"))
    two_cfg = tmp_path / "two.yaml"
    dump_config(tiny_cfg(*common, f"output.dir={tmp_path / 'two'}"), two_cfg)
    run_cli("train", str(two_cfg), "--nproc", "2", timeout=400)
    evals = [
        json.loads(line)
        for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
        if "eval_loss" in line
    ]
    assert [e["step"] for e in evals] == [0, 1]
    assert evals[0]["eval_loss"] == pytest.approx(
        one.first_eval_loss, rel=1e-5
    )  # one sample per batch: the same batches
