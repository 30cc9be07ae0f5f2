"""train/plots.py: the one chart code; RUN/loss.png is the report's loss chart."""

from __future__ import annotations

from phinetune.train.plots import CHARTS, plot_losses, render

METRICS = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "eval_loss": 2.7}, {"step": 3, "loss": 2.0}]


def test_loss_png_is_the_reports_loss_chart(tmp_path):
    out = plot_losses(METRICS, tmp_path / "loss.png")
    assert out.read_bytes() == render(CHARTS[0], METRICS)


def test_loss_png_is_written_before_anything_was_logged(tmp_path):
    assert plot_losses([], tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert render(CHARTS[0], []) is None  # the report shows no empty chart
