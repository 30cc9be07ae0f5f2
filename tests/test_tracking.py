"""TensorBoard and MLflow receive the same metrics as metrics.jsonl, inside the run folder."""

from __future__ import annotations

import importlib.util

import pytest

from phinetune.errors import ConfigError
from phinetune.train import tracking


@pytest.mark.slow
def test_tensorboard_and_mlflow_get_every_logged_step(tiny_cfg):
    pytest.importorskip("tensorboard", reason="optional extra 'track' not installed")
    pytest.importorskip("mlflow", reason="optional extra 'track' not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from phinetune.train.recipe import train

    run = train(tiny_cfg("train.report_to=[tensorboard,mlflow]")).run
    jsonl = {r["step"]: r["loss"] for r in run.read_metrics() if "loss" in r}
    events = EventAccumulator(str(run.tensorboard / tracking.PROJECT))
    events.Reload()
    assert {e.step: round(e.value, 4) for e in events.Scalars("loss")} == {k: round(v, 4) for k, v in jsonl.items()}
    assert [e.step for e in events.Scalars("eval_loss")] == [0, 2, 4]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=run.mlruns.resolve().as_uri())
    run_id = run.mlflow_run_id.read_text().strip()
    history = client.get_metric_history(run_id, "loss")
    assert {m.step: round(m.value, 4) for m in history} == {k: round(v, 4) for k, v in jsonl.items()}
    assert client.get_run(run_id).data.params["train.learning_rate"] == "0.003"


def test_a_missing_tracker_package_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(
        ConfigError,
        match=r"^train.report_to 'mlflow' needs mlflow, which is not installed: pip install 'phinetune\[track\]', or remove it from train.report_to$",
    ):
        tracking.check_installed(["tensorboard", "mlflow"])
