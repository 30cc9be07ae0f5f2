"""What a verb is pointed at (a run folder, a merged folder, a model id), checked before anything is loaded.

Every check here fails in seconds, before torch and transformers are imported, with one sentence that says
what the folder is and what to pass instead (runs/folders.py). The CLI calls them first; the loaders repeat
the checks that matter for callers that come another way.
"""

from __future__ import annotations

from pathlib import Path

from phinetune.errors import PhinetuneError

# model.name naming a run folder: training starts from weights, which a run holds only as an adapter on its base
TRAIN_FROM_RUN = (
    "model.name takes a model to train: to go on from this run, merge it (phinetune merge RUN --out DIR) and set "
    "model.name=DIR, or resume it with its own config; to train its base again, set model.name={base}"
)


def check_source(
    target: str,
    revision: str | None = None,
    checkpoint: str | None = None,
    run_advice: str | None = None,
    tokenizer_only: bool = False,
) -> None:
    """A TARGET or model.name that is a missing path or an unreachable, uncached Hub id fails here; so does a folder
    that holds no model (runs/folders.py), and a run whose final weights cannot be loaded (unfinished, damaged:
    runs/status.py) unless a `checkpoint` of it is asked for. `run_advice`: for a verb that cannot take a run folder,
    what to pass instead (a run folder is then refused); `tokenizer_only`: the verb reads only a tokenizer, which a
    folder of tokenizer files holds."""
    from phinetune.models.hub import check_model_name

    check_model_name(target, revision)
    if not Path(target).expanduser().exists():
        return
    from phinetune.runs.folders import IN_A_RUN, RUN, classify, require_model, what
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import require_final_weights

    folder = classify(target)
    if run_advice is not None and folder.run is not None and folder.kind in (RUN, *IN_A_RUN):
        raise PhinetuneError(f"{what(folder)}, not a model; {run_advice.format(base=trained_from(RunDir(folder.run)))}")
    require_model(target, tokenizer_only=tokenizer_only)
    if folder.kind == RUN and checkpoint is None:
        require_final_weights(RunDir(folder.path))


def trained_from(run) -> str:
    """The base model a run was trained from, as run.json (else its config.yaml) names it."""
    try:
        return run.read_info().base_model
    except PhinetuneError:
        pass
    try:
        return run.read_config().model.name
    except (PhinetuneError, OSError):
        return "(model.name in its config.yaml)"


def final_weights_named(run: str) -> bool:
    """Whether `last` names a run's final weights (runs/checkpoints.select): a finished run's, or saved ones; an
    unfinished run's `last` is its newest checkpoint."""
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import run_status

    return RunDir(Path(run)).has_final_weights or run_status(RunDir(Path(run))).state == "finished"


def check_run(run: str, checkpoint_flag: str | None = "--checkpoint", final: bool = True, **offer: str | None) -> None:
    """RUN must be a run folder (anything else: one sentence saying what it is and what to pass, runs/folders.py);
    `final`: this command loads the run's final weights, so an unfinished or damaged run is refused here. `offer`:
    `use_checkpoint` (how this command takes the last checkpoint; None: it cannot) and `instead`, as
    runs/status.require_final_weights takes them (its defaults: --checkpoint last)."""
    from phinetune.runs.folders import require_run
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import require_final_weights

    folder = require_run(run, checkpoint_flag)
    if final:
        require_final_weights(RunDir(folder.path), **offer)


def model_facts(target: str):
    """What inspect and plan read: a model's facts, or those of a run folder's base model."""
    from phinetune.models.inspect import load_facts
    from phinetune.progress import console
    from phinetune.runs.run_dir import RunDir

    run = RunDir(Path(target).expanduser())
    if not run.info_file.exists():
        return load_facts(target)
    info = run.read_info()
    console.print(f"{target} is a run folder; its base model: {info.base_model}", highlight=False)
    return load_facts(info.base_model, info.spec)
