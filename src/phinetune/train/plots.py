"""Training curves from RUN/metrics.jsonl as PNG (matplotlib, headless), one chart per question.

The one plotting code: training writes the loss chart as RUN/loss.png, the report renders every chart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional



@dataclass(frozen=True)
class Chart:
    name: str  # file stem and anchor
    title: str
    ylabel: str
    series: tuple[tuple[str, str, str], ...]  # (metrics key, legend label, matplotlib style)
    log_y: bool = False


def _pyplot():
    """matplotlib.pyplot, headless; imported when a chart is drawn, not with the module (half a second of every
    `phinetune train` process start, ranks included)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


CHARTS = (
    Chart("loss", "Loss (train and eval)", "loss per trained token", (("loss", "train loss", "-"), ("eval_loss", "eval loss", "o-"))),
    Chart("lr", "Learning rate", "learning rate", (("lr", "learning rate", "-"),)),
    Chart("grad_norm", "Gradient norm (before clipping)", "L2 norm", (("grad_norm", "grad norm", "-"),)),
    Chart("tokens_per_s", "Throughput", "tokens / s", (("tokens_per_s", "tokens/s", "-"),)),
    # Preference objectives (train/preference.py) and GRPO (train/grpo.py); absent from SFT runs, so not drawn there.
    Chart("rewards", "Preference rewards (beta x log-ratio to the reference)", "reward",
          (("rewards_chosen", "chosen", "-"), ("rewards_rejected", "rejected", "-"), ("margin", "margin", "--"))),
    Chart("accuracy", "Preference accuracy (chosen reward > rejected)", "share of pairs", (("accuracy", "accuracy", "-"),)),
    Chart("reward", "GRPO reward", "mean reward per completion", (("reward_mean", "mean reward", "-"), ("eval_reward", "eval reward", "o-"))),
)


def points(metrics: list[dict], key: str) -> list[tuple[float, float]]:
    return [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float)) and "step" in m]


def render(chart: Chart, metrics: list[dict], empty_ok: bool = False) -> Optional[bytes]:
    """PNG bytes, or None when the run logged none of the chart's series (unless `empty_ok`)."""
    series = [(points(metrics, key), label, style) for key, label, style in chart.series]
    if not any(pts for pts, _, _ in series) and not empty_ok:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for pts, label, style in series:
        if pts:
            ax.plot(*zip(*pts), style, label=label, alpha=0.9)
    ax.set_title(chart.title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(chart.ylabel)
    ax.grid(alpha=0.3)
    if any(pts for pts, _, _ in series):
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_all(metrics: list[dict]) -> dict[str, tuple[Chart, bytes]]:
    out = {}
    for chart in CHARTS:
        png = render(chart, metrics)
        if png is not None:
            out[chart.name] = (chart, png)
    return out


def plot_losses(metrics: list[dict], out: Path) -> Path:
    """RUN/loss.png: the loss chart (train and eval), written even before anything was logged (empty axes)."""
    out.write_bytes(render(CHARTS[0], metrics, empty_ok=True))
    return out


def render_series(title: str, xlabel: str, ylabel: str, series: list[tuple[str, list[tuple[float, float]], str]],
                  log_x: bool = False) -> bytes:
    """PNG bytes of (label, points, style) lines against any x (bench train --sweep: memory against tokens)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, pts, style in series:
        if pts:
            ax.plot(*zip(*pts), style, label=label, alpha=0.9)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
