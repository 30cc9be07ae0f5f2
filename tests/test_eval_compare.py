"""Base vs tuned comparison: paired standard error and drop flags."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phinetune.eval.compare import compare_rows, comparison_table
from phinetune.eval.scoring import TaskResult, mean_stderr


def result(name: str, hits: list[float]) -> TaskResult:
    items = [{"hits": {"acc": h}} for h in hits]
    mean = sum(hits) / len(hits)
    return TaskResult(name, len(hits), 0, {"acc": mean}, {"acc": statistics.stdev(hits) / math.sqrt(len(hits))}, items)


def _paired_by_hand(base: list[float], tuned: list[float]) -> float:
    """The paired standard error as the old hand-written code computed it: sd(differences, n-1) / sqrt(n)."""
    diffs = [t - b for b, t in zip(base, tuned)]
    n = len(diffs)
    if n < 2:
        return 0.0
    mu = sum(diffs) / n
    return math.sqrt(sum((d - mu) ** 2 for d in diffs) / (n - 1)) / math.sqrt(n)


@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 1.0])), min_size=2, max_size=40))
def test_row_stderr_is_the_stderr_of_per_item_differences(pairs):
    base, tuned = [b for b, _ in pairs], [t for _, t in pairs]
    [row] = compare_rows({"t": result("t", base)}, {"t": result("t", tuned)})
    assert row["stderr"] == pytest.approx(_paired_by_hand(base, tuned), abs=1e-12)


def test_mean_stderr_equals_lm_eval_on_differences():
    lm_metrics = pytest.importorskip("lm_eval.api.metrics")
    diffs = [t - b for b, t in zip([1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 0])]
    assert (
        mean_stderr(diffs)
        == pytest.approx(lm_metrics.mean_stderr(diffs))
        == pytest.approx(statistics.stdev(diffs) / math.sqrt(6))
    )


def test_drops_larger_than_stderr_are_flagged_and_others_not():
    base = {"piqa": result("piqa", [1.0] * 10), "arc_easy": result("arc_easy", [1, 0] * 5)}
    tuned = {"piqa": result("piqa", [0.0] * 5 + [1.0] * 5), "arc_easy": result("arc_easy", [0, 1] * 4 + [1, 0])}
    rows = {r["task"]: r for r in compare_rows(base, tuned)}
    assert rows["piqa"]["delta"] == pytest.approx(-0.5) and rows["piqa"]["drop"]  # 5 of 10 lost, consistently
    assert rows["arc_easy"]["delta"] == pytest.approx(0.0) and not rows["arc_easy"]["drop"]
    one_loss = compare_rows({"t": result("t", [1.0, 0.0] + [1.0] * 8)}, {"t": result("t", [0.0, 0.0] + [1.0] * 8)})[0]
    assert (
        one_loss["delta"] == pytest.approx(-0.1) and one_loss["stderr"] == pytest.approx(0.1) and not one_loss["drop"]
    )  # equal: not flagged
    table = comparison_table({"scorer": "phinetune", "shots": 0, "limit": 10, "rows": list(rows.values())})
    assert table.row_count == 2
    assert all(c.header for c in table.columns)  # every column is named, the drop flag's too
    assert [str(cell) for cell in table.columns[-1].cells] == ["DROP > stderr", ""]
