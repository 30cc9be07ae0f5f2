"""The scores of a run's checkpoints, the best of them, the one `--checkpoint` names, and the list of models
`--checkpoints all` looks at.

    RUN/checkpoints/step-N/trainer_state.json   {"step", ..., "scores": {"eval_loss": .., "arc_easy:acc": ..}}

Training writes checkpoints and their scores (train/checkpoint.py has the save/resume contract, train.keep what
is scored); `--checkpoint step-N|best|last` is resolved in one place, pick_checkpoint here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import CHECKPOINT_PREFIX, CHECKPOINT_STATE, RunDir
from phinetune.runs.status import checkpoint_missing, require_final_weights, run_status


def checkpoint_scores(path: Path) -> dict:
    return json.loads((path / CHECKPOINT_STATE).read_text()).get("scores") or {}


OWN_EVALUATIONS = ("eval_loss", "eval_reward")  # what a run's objective evaluates (GRPO: a reward), no task's


def score_key(criterion: str) -> str:
    """train.keep entry -> the key in a checkpoint's scores: eval_loss, eval_reward, or task:metric (acc by default)."""
    return criterion if criterion in OWN_EVALUATIONS or ":" in criterion else f"{criterion}:acc"


def best_checkpoint(found: list[tuple[int, Path]], criterion: str) -> Path | None:
    """The checkpoint with the lowest eval loss, or the highest eval reward or task score; the earliest wins a tie."""
    key, sign = score_key(criterion), (1 if criterion == "eval_loss" else -1)
    scored = []
    for step, path in found:
        scores = checkpoint_scores(path)
        if key in scores:
            scored.append((sign * scores[key], step, path))
    return min(scored)[2] if scored else None


def best_of_run(run: RunDir) -> Path:
    """`--checkpoint best`: the lowest eval loss (GRPO: the highest eval reward), else the best by the first task
    of train.keep."""
    found = run.checkpoint_dirs()
    criteria = [*OWN_EVALUATIONS] + [c for c in run.read_config().train.keep if c not in OWN_EVALUATIONS]
    best = next((b for b in (best_checkpoint(found, c) for c in criteria) if b is not None), None)
    if best is None:
        names = ", ".join(p.name for _, p in found) or "none"
        raise PhinetuneError(
            f"--checkpoint best: no checkpoint of {run.path} has scores (kept: {names}); "
            "train with train.keep=[eval_loss] (grpo: [eval_reward]) to record them, "
            "or pass --checkpoint step-N"
        )
    return best


def pick_checkpoint(run: RunDir, choice: str | None) -> Path | None:
    """The checkpoint `choice` names; None (final weights) when not asked and the run finished."""
    found = run.checkpoint_dirs()
    if choice is None:
        require_final_weights(run)  # unfinished or damaged: one sentence, offering its last checkpoint
        return None
    if not found:
        raise PhinetuneError(f"--checkpoint {choice}: {run.path} holds no checkpoint (none under {run.checkpoints})")
    picked = _named_checkpoint(run, found, choice)
    missing = checkpoint_missing(run, picked)
    if missing:
        raise PhinetuneError(
            f"--checkpoint {choice}: {missing[0]} is missing, so {picked.name} of {run.path} cannot be loaded"
        )
    return picked


def _named_checkpoint(run: RunDir, found: list[tuple[int, Path]], choice: str) -> Path:
    if choice == "last":
        return found[-1][1]
    if choice == "best":
        return best_of_run(run)
    step = choice.removeprefix("step-")
    for n, path in found:
        if step.isdigit() and n == int(step):
            return path
    raise PhinetuneError(
        f"--checkpoint {choice}: no such checkpoint in {run.path}; it has "
        f"{', '.join(p.name for _, p in found)} (or pass 'last' or 'best')"
    )


@dataclass(frozen=True)
class Point:
    """One model to look at: the base, a kept checkpoint, or the final weights."""

    label: str  # base, step-N, last
    step: int
    adapter: bool  # False: the base model alone
    checkpoint: str | None  # passed to load_for_inference


def select(run: RunDir, spec: str) -> list[Point]:
    """'all' -> base, every kept checkpoint, last; or a comma list of base, last, best, step-N (in step order).

    Here `last` is the final weights of a finished run (pick_checkpoint's `last`, the newest checkpoint,
    for a run that has none), so a column of answers "at the end" means what was actually saved at the end."""
    found = run.checkpoint_dirs()
    final_step = max((m["step"] for m in run.read_metrics() if "step" in m), default=found[-1][0] if found else 0)
    names = (
        ["base", *(p.name for _, p in found), "last"]
        if spec.strip() == "all"
        else [n.strip() for n in spec.split(",") if n.strip()]
    )
    if not names:
        raise PhinetuneError("--checkpoints is empty; pass all, or a list like base,step-10,best,last")
    points: dict[str, Point] = {}
    for name in names:
        if name == "base":
            points["base"] = Point("base", 0, False, None)
            continue
        if name == "last" and (
            run.has_final_weights or run_status(run).state == "finished"
        ):  # a damaged run says what is missing
            require_final_weights(run, use_checkpoint="name its last checkpoint ({name}) instead of last")
            path = None
        else:
            path = pick_checkpoint(run, name)
        if path is None:  # the final weights
            points["last"] = Point("last", final_step, True, None)
        else:
            step = int(path.name[len(CHECKPOINT_PREFIX) :])
            if step == final_step and "last" in names:
                continue  # the final checkpoint holds the final weights: listed once, as last
            points[path.name] = Point(path.name, step, True, path.name)
    return sorted(points.values(), key=lambda p: (p.step, p.label != "base", p.label == "last"))
