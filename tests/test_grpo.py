"""GRPO through the one recipe: group advantages, zero-signal groups counted, and expected reward rising
(a dotted-path first-letter reward from scratch; the built-in riddles example with exact_answer after a half-way SFT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from phinetune.config import load_config
from phinetune.train.objectives.grpo import advantages
from phinetune.train.objectives.rewards import exact_answer
from phinetune.train.recipe import run_steps, setup, train

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
GOOD = "abcdefghijklm"
REWARD = f"def first_letter(completion):\n    return float(bool(completion) and completion[0].lower() in {GOOD!r})\n"


def test_advantages_are_relative_to_the_group_and_flat_groups_are_counted():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    adv, flat = advantages(rewards)
    assert flat == 1
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-4))
    assert torch.equal(adv[4:8], torch.zeros(4))
    assert adv[8:].sum().abs() < 1e-5 and adv[11] > 0


def _good_mass(loop) -> float:
    """The policy's exact expected reward for a one-token completion: P(first token starts with a-m), mean over prompts."""
    tok = loop.tokenizer
    good = torch.tensor(
        [bool(tok.decode([i]).strip()) and tok.decode([i]).strip()[0].lower() in GOOD for i in range(len(tok))]
    )
    model = loop.accelerator.unwrap_model(loop.model)
    model.eval()
    with torch.no_grad():
        mass = [
            torch.softmax(model(input_ids=torch.tensor([r.prompt_ids])).logits[0, -1, : len(tok)].float(), -1)[good]
            .sum()
            .item()
            for r in loop.train_rows[:8]
        ]
    model.train()
    return sum(mass) / len(mass)


def test_grpo_raises_the_expected_reward_of_a_dotted_path_reward(tiny_cfg, tmp_path, monkeypatch):
    (tmp_path / "firstletter.py").write_text(REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    loop = setup(
        tiny_cfg(
            "train.objective=grpo",
            "data.train=builtin:riddles_qa",
            "data.limit=16",
            "data.eval_size=2",
            "grpo.rewards=[firstletter:first_letter]",
            "grpo.group_size=8",
            "grpo.max_completion_length=1",
            "grpo.beta=0",
            "train.max_steps=4",
            "train.learning_rate=3e-2",
            "train.warmup_ratio=0",
            "train.scheduler=constant",
            "adapter.modules_to_save=[lm_head]",
            "adapter.dropout=0",
            "train.recall_check=0",
        )
    )
    before = _good_mass(loop)
    run_steps(loop)
    after = _good_mass(loop)
    assert after > before + 0.15, (before, after)
    curve = [m for m in loop.run.read_metrics() if "reward_mean" in m]
    assert len(curve) == 4 and {"reward_std", "zero_std_groups", "completion_tokens"} <= set(curve[0])


# The built-in example (docs/preference.md, "GRPO on the riddles"): SFT stopped half-way, merged, then GRPO with exact_answer.
HALF_SFT, RIDDLES_GRPO = ROOT / "configs" / "tiny-grpo-riddles-sft.yaml", ROOT / "configs" / "tiny-grpo-riddles.yaml"
INVERTED = "from phinetune.train.objectives.rewards import exact_answer\n\ndef wrong(completion, answer):\n    return 1.0 - exact_answer(completion, answer)\n"


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory):
    """Stage 1 of the example, merged: the riddles SFT stopped at step 12, where each answer sentence has a moderate
    probability, so a group of 16 samples mixes rewards 0 and 1 (see the config's comments)."""
    from phinetune.export.merge import merge_run

    os.environ.setdefault("PHINETUNE_CACHE", str(tmp_path_factory.mktemp("phinetune-cache")))
    root = tmp_path_factory.mktemp("half-trained")
    train(load_config(HALF_SFT, [f"output.dir={root / 'sft'}"]))
    return merge_run(str(root / "sft"), str(root / "merged"))


def _answer_probability(loop) -> list[float]:
    """Per training prompt, the policy's probability of its reference answer sentence ("The answer is a piano."),
    teacher-forced. Every completion that starts with that sentence scores exact_answer 1, so this is an exact
    lower bound of the prompt's expected reward, with no sampling noise (the per-step reward_mean has plenty)."""
    tok, model = loop.tokenizer, loop.accelerator.unwrap_model(loop.model)
    model.eval()
    out = []
    with torch.no_grad():
        for row in loop.train_rows:
            sentence = row.answer.split(".")[0] + "."
            assert exact_answer(sentence, row.answer) == 1.0
            ids = tok(sentence, add_special_tokens=False)["input_ids"]
            assert len(ids) <= loop.cfg.grpo.max_completion_length, "the whole sentence must fit in a completion"
            logits = (
                model(input_ids=torch.tensor([row.prompt_ids + ids])).logits[0, len(row.prompt_ids) - 1 : -1].float()
            )
            out.append(torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)].sum().exp().item())
    model.train()
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
def test_grpo_with_exact_answer_raises_the_riddles_expected_reward(half_trained, tmp_path, monkeypatch):
    """The built-in example. Control: the same start with the reward inverted (1 - exact_answer) must lower it."""
    grpo = [f"model.name={half_trained}", "model.spec=null"]  # the spec must come from the merged folder's marker
    loop = setup(load_config(RIDDLES_GRPO, [*grpo, f"output.dir={tmp_path / 'grpo'}"]))
    assert loop.cfg.model.spec == "phi3-mini-4k"
    before = _answer_probability(loop)
    assert len(before) == 6 and 0.2 < _mean(before) < 0.85, before  # room to rise, and groups of mixed rewards
    run_steps(loop)
    after = _answer_probability(loop)
    curve = [m for m in loop.run.read_metrics() if "reward_mean" in m]
    assert len(curve) == 6 and curve[0]["zero_std_groups"] <= 1, curve  # the groups did carry a signal
    assert _mean(after) > _mean(before) + 0.05, (before, after)
    assert sum(a > b for a, b in zip(after, before)) >= 4, (before, after)

    (tmp_path / "inverted.py").write_text(INVERTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    control = setup(
        load_config(
            RIDDLES_GRPO,
            [*grpo, "grpo.rewards=[inverted:wrong]", "train.max_steps=1", f"output.dir={tmp_path / 'control'}"],
        )
    )
    assert _answer_probability(control) == pytest.approx(before, abs=1e-6)  # the same start
    run_steps(control)
    lowered = _answer_probability(control)
    print(
        f"answer-sentence probability {_mean(before):.3f} -> {_mean(after):.3f} in 6 steps (per prompt {before} -> {after}); "
        f"reward_mean per step {[round(m['reward_mean'], 3) for m in curve]}; inverted reward: -> {_mean(lowered):.3f} in 1 step"
    )
    assert _mean(lowered) < _mean(before) - 0.05, (before, lowered)


@pytest.mark.slow
def test_grpo_with_kl_to_the_adapter_off_reference_runs_from_the_cli_config(tiny_cfg):
    """The riddles with the built-in exact-answer reward: logs KL (0 at step 1: policy == reference) and eval reward."""
    result = train(
        tiny_cfg(
            "train.objective=grpo",
            "data.train=builtin:riddles_qa",
            "data.limit=8",
            "data.eval_size=2",
            "grpo.group_size=2",
            "grpo.max_completion_length=8",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.recall_check=0",
        )
    )
    metrics = result.run.read_metrics()
    steps = [m for m in metrics if "reward_mean" in m]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert [m["step"] for m in metrics if "eval_reward" in m] == [0, 2]
    assert 0.0 <= result.final_eval_loss <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dpo", "grpo"])
def test_kill_9_mid_run_then_resume_matches_uninterrupted(tmp_path, objective):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "kill_resume_trials.py"),
            "--trials",
            "1",
            "--save-kills",
            "1",
            "--sigterms",
            "0",
            "--seed",
            "3",
            "--objective",
            objective,
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    where = f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    data = json.loads(report.read_text())
    assert len(data["reference"]) >= 8, where
    assert any(r[3] is not None or r[5] is not None for r in data["reference"]), (
        "the curve must carry the objective's metrics"
    )
    for t in data["trials"]:
        assert t["exit"] == -9 and t["resume_exit"] == 0, where
        assert t["curve"] == data["reference"], where


def test_prompts_are_written_as_sft_writes_them(tiny_cfg, monkeypatch):
    """GRPO samples from the prompt SFT trained and inference sends: with the spec's default system prompt."""
    import dataclasses

    from phinetune.models.loading import load_tokenizer, resolve_model_path
    from phinetune.models.specs import get_spec
    from phinetune.train.objectives import grpo

    cfg = tiny_cfg("train.objective=grpo", "data.train=builtin:riddles_qa", "data.limit=4", "data.eval_size=1")
    spec = dataclasses.replace(get_spec(cfg.model.name, cfg.model.spec), system_prompt="Answer in one sentence.")
    monkeypatch.setattr(grpo, "get_spec", lambda *a: spec)
    tok = load_tokenizer(resolve_model_path(cfg.model, None), cfg.model, spec)
    data = grpo.load_data(cfg, tok, "<|end|>")
    for row in data.prompt_rows + data.eval_prompt_rows:
        assert row.prompt[0] == {"role": "system", "content": "Answer in one sentence."}
        assert "Answer in one sentence." in tok.decode(row.prompt_ids)
