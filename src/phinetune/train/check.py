"""`phinetune check`: everything a training run does before its first step, then stop.

The very same `train.prepare.prepare` and `run_preflight` as `train` (so the dtype, targets, data and
mask checks it reports are the ones training would run with); no run folder is created, and built-in
tiny models are built once into the shared cache.
"""

from __future__ import annotations

from pathlib import Path

from phinetune.config import RunConfig
from phinetune.progress import console
from phinetune.train.preflight import PreflightReport, run_preflight
from phinetune.train.prepare import prepare, with_merged_spec


def check_config(cfg: RunConfig, save_to: Path | None = None) -> PreflightReport:
    """train.recipe.setup up to the pre-flight, printed; raises on problems."""
    cfg = with_merged_spec(cfg)
    report = run_preflight(cfg, prepare(cfg), verbose=True, save_to=save_to)
    console.print("[bold green]pre-flight passed[/bold green]: nothing silently misconfigured was found", markup=True)
    return report
