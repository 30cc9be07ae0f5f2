"""train.keep keeps the newest N plus the best by eval loss and by a task; --checkpoint step-N|best|last loads them;
eval/compare --checkpoints look at every kept one."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, cli_here
from phinetune.errors import PhinetuneError
from phinetune.runs.checkpoints import pick_checkpoint
from phinetune.runs.run_dir import RunDir
from phinetune.train import checkpoint as ck

EVALSETS = ROOT / "tests" / "fixtures" / "evalsets"


def fake_checkpoints(tmp_path, scores: dict[int, dict]) -> RunDir:
    run = RunDir(tmp_path / "run")
    for step, s in scores.items():
        folder = run.checkpoints / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / ck.STATE).write_text(json.dumps({"step": step, "scores": s}))
    return run


def test_prune_keeps_newest_and_best_by_each_criterion(tmp_path):
    run = fake_checkpoints(
        tmp_path,
        {
            1: {"eval_loss": 3.0, "piqa:acc": 0.5},
            2: {"eval_loss": 2.0, "piqa:acc": 0.4},
            3: {"eval_loss": 2.5, "piqa:acc": 0.7},
            4: {"eval_loss": 2.0, "piqa:acc": 0.6},
            5: {"eval_loss": 2.9, "piqa:acc": 0.7},
            6: {"eval_loss": 4.0, "piqa:acc": 0.1},
        },
    )
    ck.prune(run, 1, ["eval_loss", "piqa"])
    # newest: 6; lowest eval loss: 2 (tied with 4, the earlier wins); highest piqa acc: 3 (tied with 5, earlier wins)
    assert [s for s, _ in ck.checkpoints(run)] == [2, 3, 6]
    ck.prune(run, 2, [])
    assert [s for s, _ in ck.checkpoints(run)] == [3, 6]


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    """6 steps, a checkpoint every step, keep the newest 1 + best eval loss + best arc_easy acc_norm."""
    from phinetune.config import load_config
    from phinetune.eval.checkpoints import training_hooks
    from phinetune.train.recipe import train

    out = tmp_path_factory.mktemp("keep") / "run"
    cfg = load_config(
        None,
        [
            "model.name=tiny-phi3",
            "data.train=builtin:riddles",
            "data.eval_size=4",
            "data.limit=24",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.eval_every=100",
            "train.log_every=1",
            "train.learning_rate=3e-3",
            "adapter.modules_to_save=[embed_tokens,lm_head]",
            "train.save_every=1",
            "train.keep_checkpoints=1",
            "train.keep=[eval_loss,arc_easy:acc_norm]",
            "eval.tasks=[arc_easy]",
            f"eval.data_dir={EVALSETS}",
            f"output.dir={out}",
        ],
    )
    return train(cfg, hooks=training_hooks(cfg)).run


def test_kept_checkpoints_match_the_logged_scores(kept_run):
    metrics = kept_run.read_metrics()
    losses = {m["step"]: m["eval_loss"] for m in metrics if "eval_loss" in m and 0 < m["step"] < 6}
    arc = {m["step"]: m["arc_easy:acc_norm"] for m in metrics if "arc_easy:acc_norm" in m}
    assert sorted(arc) == [1, 2, 3, 4, 5, 6] and sorted(losses) == [1, 2, 3, 4, 5]  # step 6's loss: the final eval
    losses[6] = next(m["eval_loss"] for m in metrics if m.get("step") == 6 and "eval_loss" in m)
    best_loss = min(losses, key=lambda s: (losses[s], s))
    best_arc = min(arc, key=lambda s: (-arc[s], s))
    assert [s for s, _ in ck.checkpoints(kept_run)] == sorted({6, best_loss, best_arc})
    assert pick_checkpoint(kept_run, "best").name == f"step-{best_loss}"
    assert (
        pick_checkpoint(kept_run, "last").name == "step-6" and pick_checkpoint(kept_run, None) is None
    )  # None: the final weights
    with pytest.raises(PhinetuneError, match="no such checkpoint.*step-6"):
        pick_checkpoint(kept_run, "step-999")


def test_checkpoint_weights_are_loaded(kept_run):
    from phinetune.runs.loading import load_for_inference

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logits = {
        name: load_for_inference(str(kept_run.path), checkpoint=name).model(input_ids=ids).logits
        for name in ["last", "step-6", *(p.name for _, p in ck.checkpoints(kept_run))]
    }
    assert torch.allclose(logits["last"], logits["step-6"], atol=1e-5)  # the last checkpoint holds the final weights
    earlier = [name for name in logits if name.startswith("step-") and name != "step-6"]
    assert earlier and all(not torch.allclose(logits[name], logits["last"], atol=1e-4) for name in earlier)


def test_select_all_lists_base_kept_and_last_once(kept_run):
    from phinetune.runs.checkpoints import select

    steps = [s for s, _ in ck.checkpoints(kept_run)]
    points = select(kept_run, "all")
    assert [p.label for p in points] == ["base", *(f"step-{s}" for s in steps if s != 6), "last"]
    assert [p.step for p in points] == [0, *(s for s in steps if s != 6), 6]
    assert [p.label for p in select(kept_run, "best,base")][0] == "base"


@pytest.mark.slow
def test_eval_and_compare_over_checkpoints(kept_run):
    proc = cli_here(
        "eval", str(kept_run.path), "--checkpoints", "all", "--tasks", "arc_easy,piqa", "--data-dir", str(EVALSETS)
    )
    assert "task scores per checkpoint" in proc.stdout
    saved = json.loads(kept_run.checkpoint_eval.read_text())
    labels = [p["label"] for p in saved["points"]]
    assert labels[0] == "base" and labels[-1] == "last" and len(labels) == len(ck.checkpoints(kept_run)) + 1
    # the scores at a kept checkpoint equal those training recorded for it (same items, same weights)
    metrics = {m["step"]: m for m in kept_run.read_metrics() if "arc_easy:acc_norm" in m}
    for p in saved["points"][1:]:
        assert p["scores"]["arc_easy:acc_norm"] == pytest.approx(metrics[p["step"]]["arc_easy:acc_norm"], abs=1e-6)
    assert kept_run.checkpoint_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = cli_here("compare", str(kept_run.path), "--checkpoints", "all", "--n", "2", "--max-new-tokens", "8")
    answers = json.loads(kept_run.checkpoint_answers.read_text())
    assert [p["label"] for p in answers["points"]] == labels and len(answers["rows"]) == 2
    assert all(set(r["answers"]) == set(labels) for r in answers["rows"])
    assert "| # | prompt | base (step 0)" in kept_run.checkpoint_compare.read_text()


def test_merge_a_kept_checkpoint(kept_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from phinetune.export.merge import merge_run
    from phinetune.runs.loading import load_for_inference

    best = pick_checkpoint(kept_run, "best").name
    out = merge_run(str(kept_run.path), str(tmp_path / "merged"), dtype="fp32", checkpoint="best")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
    expected = load_for_inference(str(kept_run.path), dtype="fp32", checkpoint=best).model(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-4)
    with pytest.raises(PhinetuneError, match="no such checkpoint"):
        merge_run(str(kept_run.path), str(tmp_path / "other"), checkpoint="step-999")
