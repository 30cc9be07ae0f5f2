"""charts.py: the one chart module. RUN/loss.png is the report's loss chart, every figure is drawn through it,
and no other module sets matplotlib up."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from PIL import Image

from phinetune.charts import CHARTS, LOSS, Line, Panel, curve, loss_png, png, render

SRC = Path(__file__).resolve().parents[1] / "src" / "phinetune"
METRICS = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "eval_loss": 2.7}, {"step": 3, "loss": 2.0}]
BLUE, RED = (0x1F, 0x77, 0xB4), (0xCC, 0x33, 0x11)  # matplotlib's first line colour; the marker line's colour


def colours(data: bytes, box=None) -> set[tuple[int, int, int]]:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return set((img.crop(box) if box else img).getdata())


def near(found: set, rgb, tol: int = 25) -> bool:  # lines are drawn at alpha 0.9 over white
    return any(all(abs(a - b) <= tol for a, b in zip(c, rgb)) for c in found)


def test_loss_png_is_the_reports_loss_chart(tmp_path):
    out = loss_png(METRICS, tmp_path / "loss.png")
    assert out.read_bytes() == render(CHARTS[0], METRICS) and CHARTS[0] is LOSS


def test_loss_png_is_written_before_anything_was_logged(tmp_path):
    assert loss_png([], tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert render(LOSS, []) is None  # the report shows no empty chart


def test_a_curve_holds_the_logged_points_against_the_step():
    panel = curve(LOSS, METRICS + [{"step": 4, "loss": "nan?"}, {"loss": 1.0}])  # not a number, no step: left out
    assert [line.points for line in panel.lines] == [[(1, 3.0), (2, 2.5), (3, 2.0)], [(2, 2.7)]]
    assert panel.xlabel == "optimizer step" and panel.title == LOSS.title


def test_panels_sit_side_by_side_and_each_is_drawn():
    scores = Panel("scores", "step", "score", (Line("piqa:acc", [(0, 0.5), (2, 0.6)], errors=[0.1, 0.1]),))
    data = png([curve(LOSS, METRICS), scores], size=(4, 3))
    width, height = Image.open(io.BytesIO(data)).size
    assert (width, height) == (2 * 4 * 90, 3 * 90)
    left, right = colours(data, (0, 0, width // 2, height)), colours(data, (width // 2, 0, width, height))
    assert near(left, BLUE) and near(right, BLUE)  # the loss line on the left, the score line on the right


def test_a_histogram_with_its_marker_line():
    data = png([Panel("lengths", "tokens", "samples", values=[3, 5, 5, 8, 13], marks=((10, "max_length=10"),))])
    found = colours(data)
    assert near(found, (0x44, 0x77, 0xAA)) and near(found, RED)


def test_no_other_module_sets_matplotlib_up():
    users = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "matplotlib" or n.startswith("matplotlib.") for n in names):
                users.append(str(path.relative_to(SRC)))
    assert sorted(set(users)) == ["charts.py"]
