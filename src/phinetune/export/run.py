"""`phinetune export RUN --to TARGET --out DIR`: merge, convert, and only then appear at DIR.

The targets, what each checks and writes, and how its runtime is run on the result: export/targets.py.

Everything is built in a hidden staging folder beside DIR and renamed into place at the very end, so an
interrupted or failed export leaves nothing that looks like a finished one. All refusals (unfinished run,
unsupported architecture, existing output, missing extra) happen before the merge starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.export.targets import ExportPlan, Target, get_target
from phinetune.extras import require
from phinetune.models.specs import ModelSpec, get_spec
from phinetune.progress import console
from phinetune.runs.folders import open_run
from phinetune.runs.run_dir import RunDir, write_merged_marker
from phinetune.runs.status import LOAD_OFFER, require_final_weights


def export_run(run_path: str, out: str, plan: ExportPlan) -> Path:
    run, spec = check_run(run_path, plan.checkpoint)
    out_dir = Path(out)
    target = check_target(plan, spec, out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model_dir = merged_folder(run, staging / "merged", plan.checkpoint)
        result = staging / "result"
        result.mkdir()
        target.write(model_dir, result, run.path.name, spec, plan)
        if out_dir.exists():  # only reachable with overwrite=True
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        result.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(p.name for p in out_dir.iterdir())
    listed = f": {', '.join(str(out_dir / f) for f in files)}" if len(files) <= 4 else f" ({len(files)} files)"
    console.print(f"exported {run.path} as {plan.to} to {out_dir}{listed}")
    next_step = target.next_step(out_dir, run.path.name)
    if next_step:
        console.print(f"next: {next_step}")
    return out_dir


def check_run(
    run_path: str, checkpoint: str | None = None, use_checkpoint: str | None = LOAD_OFFER
) -> tuple[RunDir, ModelSpec]:
    """A finished, intact run, or any run when a checkpoint of it is asked for (as generate and merge take them).
    `use_checkpoint`: how the calling command takes the last checkpoint of an unfinished or damaged run (None: it cannot)."""
    run = open_run(run_path, "--checkpoint" if use_checkpoint else None)
    if checkpoint is None:
        require_final_weights(run, use_checkpoint)
    cfg = run.read_config()
    return run, get_spec(cfg.model.name, cfg.model.spec)


def check_target(plan: ExportPlan, spec: ModelSpec, out_dir: Path) -> Target:
    """Every refusal before the merge starts: the target, an existing output, a missing package, the target's own."""
    target = get_target(plan.to)
    if out_dir.exists() and not plan.overwrite:
        raise PhinetuneError(f"export output {out_dir} already exists; choose another --out or pass --overwrite")
    require(f"export --to {target.name}", "export", *target.needs)
    target.check(plan, spec)
    return target


def merged_folder(run: RunDir, dest: Path, checkpoint: str | None = None) -> Path:
    """A standalone transformers folder of the run: the adapter merged in fp32 (merge.py), or the full model."""
    if not run.is_full:
        from phinetune.export.merge import merge_run

        return merge_run(str(run.path), str(dest), dtype="fp32", checkpoint=checkpoint, announce=False)
    if checkpoint is not None:
        raise PhinetuneError(
            f"--checkpoint {checkpoint}: {run.path} is a full fine-tune; export takes its final model/ folder "
            "(a checkpoint holds only training state there)"
        )
    shutil.copytree(run.full_model, dest)
    for item in run.tokenizer.iterdir():
        shutil.copy2(item, dest / item.name)
    cfg = run.read_config()  # what merge_run records: the spec (end-of-turn token) for the converters
    write_merged_marker(dest, get_spec(cfg.model.name, cfg.model.spec).key, run)
    return dest
