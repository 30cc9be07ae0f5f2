"""Agreement with the real LM Evaluation Harness: same tiny model, same items, lm-eval's own task configs.

The tasks are lm-eval's YAMLs (arc_easy, piqa, hellaswag, winogrande) with only the dataset swapped for local
files (phinetune.eval.harness.write_local_task), so prompts, few-shot sampling and metrics are lm-eval's code.
"""

from __future__ import annotations

import pytest

from conftest import ROOT
from phinetune.eval.scoring import evaluate_task
from phinetune.eval.tasks import TASKS, load_docs

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'phinetune[eval]')")

LIMIT = 6
EVALSETS = ROOT / "tests" / "fixtures" / "evalsets"  # the first items of each official eval file


@pytest.fixture(scope="module")
def harness_lm(tiny_phi3):
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny_phi3
    model.eval()
    return HFLM(pretrained=model, tokenizer=tok, batch_size=8)


@pytest.mark.parametrize("names,shots", [(("arc_easy", "piqa", "hellaswag", "winogrande"), 0), (("arc_easy",), 2)])
def test_our_scores_equal_lm_eval(names, shots, tiny_phi3, harness_lm, tmp_path, monkeypatch):
    from phinetune.eval.harness import run_harness

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    tasks = [TASKS[n] for n in names]
    harness = run_harness(harness_lm, tasks, LIMIT, shots, EVALSETS)  # one lm-eval run for all tasks
    model, tok = tiny_phi3
    for task in tasks:
        ours, theirs = (
            evaluate_task(
                model, tok, task, load_docs(task, EVALSETS)[:LIMIT], load_docs(task, EVALSETS, fewshot=True), shots
            ),
            harness[task.name],
        )
        assert theirs.n == ours.n == LIMIT
        for mine, other in zip(ours.items, theirs.items):  # per item and per option: the same log-likelihoods
            assert mine["lls"] == pytest.approx(other["lls"], abs=2e-4)
            assert mine["hits"] == other["hits"]
        assert ours.metrics == pytest.approx(theirs.metrics, abs=1e-9)
        assert ours.stderr == pytest.approx(theirs.stderr, abs=1e-9)


def test_harness_scores_the_same_base_and_tuned_as_ours(tiny_run, tmp_path, monkeypatch):
    """`eval --harness` and `eval` load base and tuned one way (runs.loading.base_and_tuned): the same rows."""
    from phinetune.eval.compare import EvalPlan, evaluate_run

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    ours = evaluate_run(str(tiny_run), EvalPlan([TASKS["arc_easy"]], limit=8, data_dir=EVALSETS))["rows"]
    theirs = evaluate_run(str(tiny_run), EvalPlan([TASKS["arc_easy"]], limit=8, data_dir=EVALSETS, harness=True))[
        "rows"
    ]
    for mine, other in zip(ours, theirs):
        assert (mine["base"], mine["tuned"], mine["stderr"]) == pytest.approx(
            (other["base"], other["tuned"], other["stderr"]), abs=1e-9
        )
