"""THE preparation of a run: spec, dtype plan, tokenizer, model (with its adapter) and tokenized data.

`train` (train/recipe.py), `check` (train/check.py), `bench train` (bench/train_child.py, through
recipe.setup) and `plan --validate` (bench/plan.py) all call `prepare`, so what `check` reports
is what `train` runs: the same dtype choice (choose_train_dtype: bf16 on a CPU with bf16 units where it is
sound; `check` once used choose_dtype and reported fp32 there), the same end-of-turn token (end_of_turn),
the same data and the same adapter. Nothing here writes to a run folder; the caller decides that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phinetune.config import RunConfig
from phinetune.data.dataset import PreparedData
from phinetune.data.end_of_turn import end_of_turn
from phinetune.models.loading import DtypePlan, load_model, load_tokenizer, resolve_model_path
from phinetune.models.specs import ModelSpec, get_spec
from phinetune.progress import progress_console
from phinetune.runs.run_dir import merged_spec_key
from phinetune.train.adapter import apply_adapter
from phinetune.train.loop import Objective
from phinetune.train.objectives import objective
from phinetune.train.precision import choose_train_dtype
from phinetune.train.preflight import context_check
from phinetune.train.recompute import Checkpointing, choose_checkpointing


@dataclass
class Prepared:
    spec: ModelSpec
    dtype: DtypePlan
    tokenizer: object
    model: object  # the base with its adapter applied (PEFT model for LoRA)
    data: PreparedData | None  # None when prepare(..., with_data=False)
    path: str  # where the base was loaded from (a built-in tiny model's materialized folder)
    eot: str  # end_of_turn(tokenizer, spec): the token every assistant turn must end with
    objective: Objective  # train.objective's, which read `data` and trains on it (train/objectives/)
    checkpointing: Checkpointing = Checkpointing(False, "")  # gradient checkpointing as chosen (train/recompute.py)


def with_merged_spec(cfg: RunConfig) -> RunConfig:
    """`cfg` with model.spec read from a merged folder's marker (runs/run_dir.py) when model.name is one and
    model.spec is unset: its config.json alone cannot tell Phi-3-mini-128k from Phi-3.5-mini, the marker can."""
    if cfg.model.spec is not None or not Path(cfg.model.name).is_dir():
        return cfg
    key = merged_spec_key(Path(cfg.model.name))
    return cfg if key is None else cfg.model_copy(update={"model": cfg.model.model_copy(update={"spec": key})})


def prepare(
    cfg: RunConfig,
    base_dir: Path | None = None,
    first: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    with_data: bool = True,
) -> Prepared:
    """Load, tokenize and adapt exactly as training does. `base_dir` receives a built-in tiny model's
    weights (training passes RUN/base; None: the shared cache); `first` guards writing them (accelerate's main_process_first when several processes start)."""
    spec = get_spec(cfg.model.name, cfg.model.spec)
    # data.max_length against the model's context: a known model's before the slow load, another's from its config.
    context_note = context_check(cfg.data.max_length, cfg.model.name, spec, spec.context_length) if with_data else ""
    with first():  # a tiny base is written once, then read by the others
        path = resolve_model_path(cfg.model, base_dir, seed=cfg.train.seed)
    dtype = choose_train_dtype(cfg, spec, path)
    with progress_console.status(
        f"Loading {cfg.model.name} ({dtype.name}{', nf4' if cfg.model.quant == 'nf4' else ''})"
    ):
        tokenizer = load_tokenizer(path, cfg.model, spec)
        model = load_model(path, cfg.model, spec, tokenizer, dtype)
    if with_data and not spec.context_length:
        context_note = context_check(
            cfg.data.max_length, cfg.model.name, spec, getattr(model.config, "max_position_embeddings", 0) or 0
        )
    if context_note:
        progress_console.print(f"note: {context_note}", style="yellow", highlight=False, markup=False)
    eot = end_of_turn(tokenizer, spec, cfg.model.end_of_turn)
    # The data train.objective reads (SFT conversations, preference pairs, GRPO prompts): train/objectives/.
    goal = objective(cfg.train.objective)
    data = goal.load_data(cfg, tokenizer, eot) if with_data else None
    checkpointing = choose_checkpointing(cfg, path, dtype.name)
    checkpointing.announce()
    model_cfg = cfg.model.model_copy(update={"gradient_checkpointing": checkpointing.on})
    model = apply_adapter(model, spec, cfg.adapter, model_cfg, tokenizer, cfg.preflight)
    return Prepared(spec, dtype, tokenizer, model, data, path, eot, goal, checkpointing)
