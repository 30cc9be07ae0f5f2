"""Base vs tuned comparison: paired standard error and drop flags."""

from __future__ import annotations

import math
import statistics

import pytest

from phinetune.eval.compare import compare_rows, comparison_table, paired_stderr
from phinetune.eval.scoring import TaskResult


def result(name: str, hits: list[float]) -> TaskResult:
    items = [{"hits": {"acc": h}} for h in hits]
    mean = sum(hits) / len(hits)
    return TaskResult(name, len(hits), 0, {"acc": mean}, {"acc": statistics.stdev(hits) / math.sqrt(len(hits))}, items)


def test_paired_stderr_is_stderr_of_per_item_differences():
    base, tuned = [1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 0]
    diffs = [t - b for b, t in zip(base, tuned)]
    assert paired_stderr(base, tuned) == pytest.approx(statistics.stdev(diffs) / math.sqrt(len(diffs)))
    assert paired_stderr(base, base) == 0.0


def test_drops_larger_than_stderr_are_flagged_and_others_not():
    base = {"piqa": result("piqa", [1.0] * 10), "arc_easy": result("arc_easy", [1, 0] * 5)}
    tuned = {"piqa": result("piqa", [0.0] * 5 + [1.0] * 5), "arc_easy": result("arc_easy", [0, 1] * 4 + [1, 0])}
    rows = {r["task"]: r for r in compare_rows(base, tuned)}
    assert rows["piqa"]["delta"] == pytest.approx(-0.5) and rows["piqa"]["drop"]  # 5 of 10 lost, consistently
    assert rows["arc_easy"]["delta"] == pytest.approx(0.0) and not rows["arc_easy"]["drop"]
    one_loss = compare_rows({"t": result("t", [1.0, 0.0] + [1.0] * 8)}, {"t": result("t", [0.0, 0.0] + [1.0] * 8)})[0]
    assert one_loss["delta"] == pytest.approx(-0.1) and one_loss["stderr"] == pytest.approx(0.1) and not one_loss["drop"]  # equal: not flagged
    table = comparison_table({"scorer": "phinetune", "shots": 0, "limit": 10, "rows": list(rows.values())})
    assert table.row_count == 2
    assert all(c.header for c in table.columns)  # every column is named, the drop flag's too
    assert [str(cell) for cell in table.columns[-1].cells] == ["DROP > stderr", ""]
