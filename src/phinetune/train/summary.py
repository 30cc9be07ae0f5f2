"""What `phinetune train` prints when a run ends: its evaluation before and after, and where the run is."""

from __future__ import annotations

from phinetune.progress import console

EVAL_NAMES = {"grpo": "eval reward"}  # what an objective's evaluation measures, where it is not the eval loss


def print_summary(result, objective: str) -> None:
    """`result`: train.recipe.TrainResult of a run trained with `objective` (train.objective)."""
    if result.first_eval_loss is not None:
        name = EVAL_NAMES.get(objective, "eval loss")
        console.print(
            f"{name}: {result.first_eval_loss:.4f} at step 0 -> {result.final_eval_loss:.4f} after {result.steps} steps"
        )
    path = result.run.path
    console.print(f'run folder: {path}  (next: phinetune generate {path} "...", phinetune merge {path} --out DIR)')
