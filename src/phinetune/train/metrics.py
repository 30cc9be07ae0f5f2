"""Metrics as JSONL, one object per line, appended and flushed as they happen (nothing lost on a crash)."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, **record) -> None:
        clean = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()
