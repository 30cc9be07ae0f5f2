"""Experiment trackers besides metrics.jsonl, chosen by `train.report_to`: tensorboard, mlflow.

Both write inside the run folder (RUN/tensorboard, RUN/mlruns: a local MLflow file store), so a run stays
self-contained and nothing leaves the machine unless you point MLflow elsewhere (MLFLOW_TRACKING_URI).
They are optional extras (`pip install phinetune[track]`); asking for one that is not installed is an error
before training starts, not a silent no-op.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from phinetune.errors import ConfigError


class TensorBoardTracker:
    def __init__(self, run_path: Path, config: dict, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events past the checkpoint, so a resumed curve has no duplicate points.
        self.writer = SummaryWriter(str(run_path / "tensorboard"), purge_step=resume_step or None)
        if not resume_step:
            self.writer.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in config.items()) + "\n```")

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    def __init__(self, run_path: Path, config: dict, resume_step: int):
        import mlflow

        self.mlflow = mlflow
        # MLflow 3 prefers a database store; a plain file store keeps the run folder self-contained with no
        # extra services or packages (sqlalchemy), so opt in to it unless the user chose a tracking URI.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (run_path / "mlruns").resolve().as_uri())
        mlflow.set_experiment("phinetune")
        id_file = run_path / "mlflow_run_id"
        # A resumed run continues the same MLflow run instead of starting a second one.
        run_id = id_file.read_text().strip() if resume_step and id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=run_path.name)
        id_file.write_text(self.run.info.run_id)
        if run_id is None:
            mlflow.log_params(config)

    def log(self, values: dict, step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS = {"tensorboard": (TensorBoardTracker, "tensorboard"), "mlflow": (MLflowTracker, "mlflow")}


class Trackers:
    """Fan out numeric metrics to every selected tracker (main process only)."""

    def __init__(self, names: list[str], run_path: Path, cfg, resume_step: int = 0):
        check_installed(names)
        flat = {f"{section}.{key}": str(value) for section, fields in cfg.model_dump(mode="json").items() for key, value in fields.items()}
        self.trackers = [TRACKERS[name][0](run_path, flat, resume_step) for name in names]

    def log(self, record: dict) -> None:
        step = int(record.get("step", 0))
        values = {k: float(v) for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(values, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def check_installed(names: list[str]) -> None:
    for name in names:
        module = TRACKERS[name][1]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.report_to lists '{name}' but the {module} package is not installed; "
                              f"pip install 'phinetune[track]' (or {module}), or remove it from train.report_to")
