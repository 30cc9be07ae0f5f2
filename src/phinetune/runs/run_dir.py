"""The self-describing run folder: later verbs (merge, generate, chat, eval) need only its path.

Every name a run folder holds is an attribute here, and nowhere else spelled out:

    RUN/config.yaml      resolved config          RUN/adapter/     PEFT adapter (or RUN/model/ for full FT)
    RUN/run.json         base model, spec, status RUN/tokenizer/   tokenizer with its chat template
    RUN/metrics.jsonl    one JSON object per log  RUN/loss.png     train/eval loss curves
    RUN/base/            the base weights, only for built-in tiny models (no Hub to fetch them from)
    RUN/checkpoints/     resumable states         RUN/preflight.json  the pre-flight report (train)
    RUN/eval.json        base vs tuned benchmarks (eval)            RUN/compare.md  base vs tuned answers (compare)
    RUN/samples.json     the report's cached sample answers         RUN/report.html, report.md, report_plots/ (report)
    RUN/tensorboard/, RUN/mlruns/, RUN/mlflow_run_id   experiment trackers (train.report_to)
    RUN/reference_logps.safetensors   preference runs with preference.reference=cached: the reference
                         model's log-probs of every pair, computed once before step 1
    RUN/train.lock       locked by the training process while it trains (runs/status.py: running or interrupted)

A merged folder (`phinetune merge`) is a plain Hugging Face folder plus MERGED_MARKER, which records its spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from phinetune.config import RunConfig, dump_config, load_config
from phinetune.errors import PhinetuneError

MERGED_MARKER = "phinetune.json"  # in a merged folder: {"spec": key, "merged_from": run path}
# RUN/checkpoints/step-N/ (published by one rename from .tmp-step-N/) holds STATE once complete, and for a
# PEFT run the adapter's own config (ADAPTER_CONFIG), so the checkpoint loads without the training code.
CHECKPOINT_PREFIX, CHECKPOINT_TMP_PREFIX, CHECKPOINT_STATE = "step-", ".tmp-step-", "trainer_state.json"
CHECKPOINT_WEIGHTS, ADAPTER_CONFIG = "model.safetensors", "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file name for the adapter's weights, in RUN/adapter/
CHECKPOINT_SHARDED = "sharded"  # inside a checkpoint of an FSDP2-on-CPU run: torch.distributed.checkpoint shards (train/distributed/sharding.py)
# ... and its learning-rate schedule: accelerate's file name for the first register_for_checkpointing object
CHECKPOINT_SHARDED_SCHEDULER = "custom_checkpoint_0.pkl"


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
    preflight = property(lambda self: self.path / "preflight.json")
    eval_report = property(lambda self: self.path / "eval.json")
    compare = property(lambda self: self.path / "compare.md")
    samples = property(lambda self: self.path / "samples.json")
    report_html = property(lambda self: self.path / "report.html")
    report_md = property(lambda self: self.path / "report.md")
    report_plots = property(lambda self: self.path / "report_plots")
    tensorboard = property(lambda self: self.path / "tensorboard")
    mlruns = property(lambda self: self.path / "mlruns")
    mlflow_run_id = property(lambda self: self.path / "mlflow_run_id")
    reference_logps = property(lambda self: self.path / "reference_logps.safetensors")
    contamination = property(lambda self: self.path / "contamination.json")  # training samples overlapping eval.tasks
    checkpoint_eval = property(
        lambda self: self.path / "checkpoint_eval.json"
    )  # `eval --checkpoints`: task scores per step
    checkpoint_plot = property(lambda self: self.path / "checkpoint_scores.png")
    checkpoint_compare = property(lambda self: self.path / "compare_checkpoints.md")  # `compare --checkpoints`
    checkpoint_answers = property(lambda self: self.path / "compare_checkpoints.json")
    judge_journal = property(lambda self: self.path / "judge" / "journal.jsonl")  # one line per judge call (resume)
    judge_answers = property(lambda self: self.path / "judge" / "answers.json")  # the answers being judged
    judge_result = property(lambda self: self.path / "judge.json")  # win/tie/loss rates with intervals and reasons
    lock = property(
        lambda self: self.path / "train.lock"
    )  # flock'ed by the training process; who holds it (runs/status.py)

    @classmethod
    def create(cls, cfg: RunConfig) -> RunDir:
        """Start an empty run folder. Whether an existing one may be replaced or resumed is decided before
        (train/checkpoint.py start_or_resume, which removes it); here it must be absent or empty."""
        run = cls(Path(cfg.output.dir))
        if run.path.exists() and any(run.path.iterdir()):
            raise PhinetuneError(
                f"output folder {run.path} is not empty; a new run starts only in an absent or empty folder"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run.config)
        return run

    def write_info(self, info: RunInfo) -> None:
        self.info_file.write_text(json.dumps(asdict(info), indent=2))

    def read_info(self) -> RunInfo:
        try:
            return RunInfo(**json.loads(self.info_file.read_text()))
        except FileNotFoundError:
            raise PhinetuneError(
                f"{self.info_file} is missing: the run folder {self.path} is damaged (train writes it at the start)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise PhinetuneError(
                f"{self.info_file} is not a run record phinetune wrote ({exc}); the run folder {self.path} is damaged"
            ) from None

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

    @property
    def has_final_weights(self) -> bool:
        return self.adapter.exists() or self.full_model.exists()

    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first. A folder counts only once its rename published it."""
        if not self.checkpoints.exists():
            return []
        n = len(CHECKPOINT_PREFIX)
        found = [
            (int(p.name[n:]), p)
            for p in self.checkpoints.iterdir()
            if p.name.startswith(CHECKPOINT_PREFIX) and p.name[n:].isdigit() and (p / CHECKPOINT_STATE).exists()
        ]
        return sorted(found)


def write_merged_marker(folder: Path, spec_key: str, run: RunDir, **details) -> None:
    """`details`: what else the merge records (which base a QLoRA run merged into, the measured logit gap)."""
    (Path(folder) / MERGED_MARKER).write_text(
        json.dumps({"spec": spec_key, "merged_from": str(run.path), **details}, indent=2)
    )


def merged_spec_key(folder: Path) -> str | None:
    """The spec a merged folder records, or None for any other folder."""
    marker = Path(folder) / MERGED_MARKER
    return json.loads(marker.read_text())["spec"] if marker.exists() else None
