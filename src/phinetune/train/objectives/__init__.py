"""What `train.objective` selects: the data it reads, the rows it trains on, its step and its evaluation.

The recipe (train/recipe.py) is the same for every objective; only these five functions differ. They are
named here by module path and imported on first use, so SFT never imports the preference or GRPO code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Objective:
    name: str
    load_data: Callable  # (cfg, tokenizer, eot) -> PreparedData (its .train/.train_records feed the pre-flight)
    rows: Callable  # (data, cfg) -> (train rows, eval rows)
    begin: Callable  # (loop) -> None: reference model / cached log-probs, before a checkpoint is loaded
    step: Callable  # (loop, step) -> stats dict: loss, grad_norm, lr, tokens, trained_tokens, metrics
    evaluate: Callable  # (loop) -> float
    eval_key: str = "eval_loss"  # the metrics.jsonl name of what evaluate returns


MODULES = {"sft": "phinetune.train.recipe", "dpo": "phinetune.train.objectives.preference", "ipo": "phinetune.train.objectives.preference",
           "orpo": "phinetune.train.objectives.preference", "simpo": "phinetune.train.objectives.preference", "kto": "phinetune.train.objectives.preference",
           "grpo": "phinetune.train.objectives.grpo"}


def objective(name: str) -> Objective:
    module = importlib.import_module(MODULES[name])
    return Objective(name, module.load_data, module.rows, module.begin, module.train_step, module.evaluate,
                     getattr(module, "EVAL_KEY", "eval_loss"))
