"""What `train.objective` selects: one module per objective (family), each behind train/loop.py's `Objective`.

    sft.py          next-token loss on the trained tokens (the default)
    preference.py   dpo, ipo, orpo, simpo (pairs) and kto (unpaired labels); the losses in pref_losses.py
    grpo.py         sampled completions scored by reward functions (rewards.py)

The recipe (train/recipe.py) is the same for every objective. Each is imported when a run names it, so an SFT run
never loads the preference or GRPO code.
"""

from __future__ import annotations

from phinetune.train.loop import Objective

PREFERENCE = ("dpo", "ipo", "orpo", "simpo", "kto")
NAMES = ("sft", *PREFERENCE, "grpo")  # config/schema.py's train.objective choices, in the same order


def objective(name: str) -> Objective:
    """A fresh objective (its state not yet set up: `begin` does that) for the `train.objective` value `name`."""
    if name == "sft":
        from phinetune.train.objectives.sft import Sft

        return Sft()
    if name in PREFERENCE:
        from phinetune.train.objectives.preference import Preference

        return Preference(name)
    if name == "grpo":
        from phinetune.train.objectives.grpo import Grpo

        return Grpo()
    raise ValueError(f"train.objective {name!r}: expected one of {', '.join(NAMES)}")
