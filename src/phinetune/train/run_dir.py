"""The self-describing run folder: later verbs (merge, generate, chat, eval) need only its path.

    RUN/config.yaml      resolved config          RUN/adapter/     PEFT adapter (or RUN/model/ for full FT)
    RUN/run.json         base model, spec, status RUN/tokenizer/   tokenizer with its chat template
    RUN/metrics.jsonl    one JSON object per log  RUN/loss.png     train/eval loss curves
    RUN/base/            the base weights, only for built-in tiny models (no Hub to fetch them from)
    RUN/reference_logps.safetensors   preference runs with preference.reference=cached: the reference
                         model's log-probs of every pair, computed once before step 1
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from phinetune.config import RunConfig, dump_config, load_config
from phinetune.errors import PhinetuneError


@dataclass
class RunInfo:
    base_model: str  # hub id or absolute local path
    spec: str
    method: str
    quant: str
    dtype: str
    status: str = "running"
    phinetune_version: str = ""


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    info_file = property(lambda self: self.path / "run.json")
    adapter = property(lambda self: self.path / "adapter")
    full_model = property(lambda self: self.path / "model")
    tokenizer = property(lambda self: self.path / "tokenizer")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    plot = property(lambda self: self.path / "loss.png")
    base = property(lambda self: self.path / "base")
    checkpoints = property(lambda self: self.path / "checkpoints")
    reference_logps = property(lambda self: self.path / "reference_logps.safetensors")

    @classmethod
    def create(cls, cfg: RunConfig) -> "RunDir":
        run = cls(Path(cfg.output.dir))
        if run.path.exists() and any(run.path.iterdir()):
            if not cfg.output.overwrite:
                raise PhinetuneError(f"output folder {run.path} already holds a run; choose another output.dir or pass output.overwrite=true to replace it")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run.config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path))
        if not run.info_file.exists():
            raise PhinetuneError(f"{run.path} is not a phinetune run folder (no run.json); pass the output.dir of a finished `phinetune train`")
        return run

    def write_info(self, info: RunInfo) -> None:
        self.info_file.write_text(json.dumps(asdict(info), indent=2))

    def read_info(self) -> RunInfo:
        return RunInfo(**json.loads(self.info_file.read_text()))

    def read_config(self) -> RunConfig:
        return load_config(self.config)

    def set_status(self, status: str) -> None:
        info = self.read_info()
        info.status = status
        self.write_info(info)

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    @property
    def is_full(self) -> bool:
        return self.full_model.exists()

    def weights_dir(self) -> Optional[Path]:
        return self.full_model if self.is_full else self.adapter
