"""Metrics as JSONL, one object per line, appended and flushed as they happen (nothing lost on a crash)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from phinetune.train.guards import disk_guard


class MetricsLog:
    """Only the main process writes (so N processes do not log each step N times); `trackers` get a copy."""

    def __init__(self, path: Path, enabled: bool = True, trackers=None):
        self.path, self.enabled, self.trackers = path, enabled, trackers

    def write(self, **record) -> None:
        if not self.enabled:
            return
        clean = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
        with disk_guard(f"metrics {self.path}"):
            with self.path.open("a") as fh:
                fh.write(json.dumps(clean) + "\n")
                fh.flush()
        if self.trackers is not None:
            self.trackers.log(clean)
