"""The self-describing run folder: later verbs (merge, generate, chat, eval) need only its path.

    RUN/config.yaml      resolved config          RUN/adapter/     PEFT adapter (or RUN/model/ for full FT)
    RUN/run.json         base model, spec, status RUN/tokenizer/   tokenizer with its chat template
    RUN/metrics.jsonl    one JSON object per log  RUN/loss.png     train/eval loss curves
    RUN/base/            the base weights, only for built-in tiny models (no Hub to fetch them from)
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
    contamination = property(lambda self: self.path / "contamination.json")  # training samples overlapping eval.tasks
    checkpoint_eval = property(lambda self: self.path / "checkpoint_eval.json")  # `eval --checkpoints`: task scores per step
    checkpoint_plot = property(lambda self: self.path / "checkpoint_scores.png")
    checkpoint_compare = property(lambda self: self.path / "compare_checkpoints.md")  # `compare --checkpoints`
    checkpoint_answers = property(lambda self: self.path / "compare_checkpoints.json")
    judge_journal = property(lambda self: self.path / "judge" / "journal.jsonl")  # one line per judge call (resume)
    judge_answers = property(lambda self: self.path / "judge" / "answers.json")  # the answers being judged
    judge_result = property(lambda self: self.path / "judge.json")  # win/tie/loss rates with intervals and reasons

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


def resolve_checkpoint(run: RunDir, which: str) -> Optional[Path]:
    """`--checkpoint step-N|best|last` -> the checkpoint folder to load over the run's weights (None: the final weights).

    last: the final weights of a finished run (else its newest checkpoint). best: the checkpoint with the lowest eval
    loss, else the best by the first train.keep criterion (train.keep records these scores). step-N: that checkpoint.
    The one place these names are resolved, for every verb that takes --checkpoint."""
    from phinetune.train.checkpoint import PREFIX, best_checkpoint, checkpoints

    found = checkpoints(run)
    names = ", ".join(p.name for _, p in found) or "none"
    if which == "last":
        if run.read_info().status == "finished" or not found:
            return None
        return found[-1][1]
    if which == "best":
        criteria = ["eval_loss"] + [c for c in run.read_config().train.keep if c != "eval_loss"]
        best = next((b for b in (best_checkpoint(found, c) for c in criteria) if b is not None), None)
        if best is None:
            raise PhinetuneError(f"--checkpoint best: no checkpoint of {run.path} has scores (kept: {names}); "
                                 "train with train.keep=[eval_loss] to record them, or pass --checkpoint step-N")
        return best
    if which.startswith(PREFIX) and which[len(PREFIX):].isdigit():
        hit = next((p for step, p in found if step == int(which[len(PREFIX):])), None)
        if hit is None:
            raise PhinetuneError(f"--checkpoint {which}: {run.path} has no such checkpoint (kept: {names})")
        return hit
    raise PhinetuneError(f"--checkpoint {which!r}: expected step-N, best or last")
