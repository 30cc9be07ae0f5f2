"""Experiment trackers besides metrics.jsonl, chosen by `train.report_to`: tensorboard, mlflow.

accelerate's trackers do the work (`Accelerator(log_with=...)`, `init_trackers`, `log`, each tracker's `finish`); what we
add is where they write and how a resumed run continues. Both write inside the run folder (RUN/tensorboard/,
RUN/mlruns/: a local MLflow file store), so a run stays self-contained and nothing leaves the machine unless you
point MLflow elsewhere (MLFLOW_TRACKING_URI). They are optional extras (`pip install phinetune[track]`); asking
for one that is not installed is an error before training starts, not accelerate's silent skip.
"""

from __future__ import annotations

import os

from phinetune.errors import ConfigError
from phinetune.extras import require
from phinetune.runs.run_dir import RunDir

PROJECT = "phinetune"  # the MLflow experiment; TensorBoard writes to RUN/tensorboard/phinetune
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def accelerator_kwargs(names: list[str], run: RunDir) -> dict:
    """What `Accelerator(...)` needs to know about the trackers (checked first: accelerate would only warn)."""
    check_installed(names)
    return {"log_with": list(names), "project_dir": str(run.tensorboard)} if names else {}


class Trackers:
    """Fan out numeric metrics to every selected tracker through the accelerator (main process only)."""

    def __init__(self, accelerator, run: RunDir, cfg, resume_step: int = 0):
        self.accelerator = accelerator
        names = cfg.train.report_to
        flat = {
            f"{section}.{key}": str(value)
            for section, fields in cfg.model_dump(mode="json").items()
            for key, value in fields.items()
        }
        kwargs = {}
        if "tensorboard" in names:
            # purge_step drops events past the checkpoint, so a resumed curve has no duplicate points.
            kwargs["tensorboard"] = {"purge_step": resume_step or None}
        if "mlflow" in names:
            import mlflow

            # MLflow 3 prefers a database store; a plain file store keeps the run folder self-contained with no
            # extra services or packages (sqlalchemy), so opt in to it unless the user chose a tracking URI.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or run.mlruns.resolve().as_uri())
            # A resumed run continues the same MLflow run instead of starting a second one.
            run_id = run.mlflow_run_id.read_text().strip() if resume_step and run.mlflow_run_id.exists() else None
            kwargs["mlflow"] = {"run_id": run_id, "run_name": run.path.name}
        accelerator.init_trackers(PROJECT, config=None if resume_step else flat, init_kwargs=kwargs)
        if "mlflow" in names:
            run.mlflow_run_id.write_text(accelerator.get_tracker("mlflow", unwrap=True).info.run_id)

    def log(self, record: dict) -> None:
        values = {k: float(v) for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
        self.accelerator.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        # Not accelerator.end_training(): that also destroys the process group, and only the main process gets here.
        for tracker in self.accelerator.trackers:
            tracker.finish()


def check_installed(names: list[str]) -> None:
    for name in names:
        require(
            f"train.report_to '{name}'",
            "track",
            PACKAGES[name],
            error=ConfigError,
            instead=", or remove it from train.report_to",
        )
