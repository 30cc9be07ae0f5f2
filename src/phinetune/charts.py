"""Every chart phinetune draws, as PNG: matplotlib set up headless here once, each kind of chart drawn once.

- Training curves from RUN/metrics.jsonl (`CHARTS`, one per question): `phinetune train` writes the loss chart
  as RUN/loss.png, `phinetune report` draws every chart the run logged, `eval --checkpoints` puts the same loss
  chart beside the task scores.
- Any other figure is a list of `Panel`s (lines with optional error bars, or a histogram with marker lines):
  `data inspect`'s token-length histogram, `eval --checkpoints`' scores per step, `bench train --sweep`'s memory.

A layer-0 module: it imports nothing of phinetune, so every layer can draw with it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Points = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Chart:
    """A training curve: which metrics.jsonl keys it plots against the optimizer step."""

    name: str  # file stem and anchor
    title: str
    ylabel: str
    series: tuple[tuple[str, str, str], ...]  # (metrics key, legend label, matplotlib style)


@dataclass(frozen=True)
class Line:
    label: str
    points: Points
    style: str = "-"
    errors: Sequence[float] | None = None  # one per point, drawn as error bars (e.g. one standard error)


@dataclass(frozen=True)
class Panel:
    """One set of axes: lines, or a histogram of `values` with vertical `marks` (x, label)."""

    title: str
    xlabel: str
    ylabel: str
    lines: tuple[Line, ...] = ()
    values: Sequence[float] = ()
    marks: tuple[tuple[float, str], ...] = ()


LOSS = Chart(
    "loss",
    "Loss (train and eval)",
    "loss per trained token",
    (("loss", "train loss", "-"), ("eval_loss", "eval loss", "o-")),
)
CHARTS = (
    LOSS,
    Chart("lr", "Learning rate", "learning rate", (("lr", "learning rate", "-"),)),
    Chart("grad_norm", "Gradient norm (before clipping)", "L2 norm", (("grad_norm", "grad norm", "-"),)),
    Chart("tokens_per_s", "Throughput", "tokens / s", (("tokens_per_s", "tokens/s", "-"),)),
    # Preference objectives and GRPO; absent from SFT runs, so not drawn there.
    Chart(
        "rewards",
        "Preference rewards (beta x log-ratio to the reference)",
        "reward",
        (("rewards_chosen", "chosen", "-"), ("rewards_rejected", "rejected", "-"), ("margin", "margin", "--")),
    ),
    Chart(
        "accuracy", "Preference accuracy (chosen reward > rejected)", "share of pairs", (("accuracy", "accuracy", "-"),)
    ),
    Chart(
        "reward",
        "GRPO reward",
        "mean reward per completion",
        (("reward_mean", "mean reward", "-"), ("eval_reward", "eval reward", "o-")),
    ),
)
STEP = "optimizer step"
DPI = 90


def _pyplot():
    """matplotlib.pyplot, headless; imported when a chart is drawn, not with the module (half a second of every
    `phinetune train` process start, ranks included)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def points(metrics: list[dict], key: str) -> list[tuple[float, float]]:
    return [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float)) and "step" in m]


def curve(chart: Chart, metrics: list[dict]) -> Panel:
    """The training curve as a panel: one line per logged series, against the optimizer step."""
    lines = tuple(Line(label, points(metrics, key), style) for key, label, style in chart.series)
    return Panel(chart.title, STEP, chart.ylabel, lines)


def png(panels: Sequence[Panel], size: tuple[float, float] = (6.4, 3.4)) -> bytes:
    """PNG bytes of the panels side by side; `size` is one panel's (width, height) in inches."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw(ax, panel)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def save(panels: Sequence[Panel], path: Path, size: tuple[float, float] = (6.4, 3.4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(panels, size))
    return path


def _draw(ax, panel: Panel) -> None:
    if panel.values:
        ax.hist(panel.values, bins=min(50, max(5, len(set(panel.values)))), color="#4477aa")
    for x, label in panel.marks:
        ax.axvline(x, color="#cc3311", linestyle="--", label=label)
    for line in panel.lines:
        if not line.points:
            continue
        xs, ys = zip(*line.points)
        if line.errors is not None:
            ax.errorbar(xs, ys, yerr=line.errors, marker="o", capsize=3, label=line.label)
        else:
            ax.plot(xs, ys, line.style, label=line.label, alpha=0.9)
    ax.set_title(panel.title)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    labelled = ax.get_legend_handles_labels()[0]
    if labelled:
        ax.legend(fontsize=7 if len(labelled) > 4 else None)


def render(chart: Chart, metrics: list[dict], empty_ok: bool = False) -> bytes | None:
    """PNG bytes of a training curve, or None when the run logged none of its series (unless `empty_ok`)."""
    panel = curve(chart, metrics)
    if not any(line.points for line in panel.lines) and not empty_ok:
        return None
    return png([panel])


def render_all(metrics: list[dict]) -> dict[str, tuple[Chart, bytes]]:
    """name -> (chart, PNG) for every training curve the run logged (the report's charts)."""
    out = {}
    for chart in CHARTS:
        drawn = render(chart, metrics)
        if drawn is not None:
            out[chart.name] = (chart, drawn)
    return out


def loss_png(metrics: list[dict], out: Path) -> Path:
    """RUN/loss.png: the loss chart (train and eval), written even before anything was logged (empty axes)."""
    out.write_bytes(render(LOSS, metrics, empty_ok=True))
    return out
