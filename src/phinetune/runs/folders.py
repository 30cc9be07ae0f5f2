"""What is this folder? The one answer every verb gives when it is handed a path.

A user hands a verb the folder that seems right: `RUN/adapter` (it holds the adapter), `RUN/checkpoints/step-40`
(the checkpoint they want), `runs/` (where the runs are), a merged folder where a run is expected, or an empty
one. Loaded blindly, each ends deep inside transformers (a tokenizer error asking to install sentencepiece).
Here a folder is classified once, from the files it holds and the run folder around it, and a refusal says what
the folder is and what to pass instead:

    run          RUN/ (run.json, or config.yaml beside the run's other files)   usable where a run or a model is
    adapter      RUN/adapter, or a PEFT adapter folder outside any run          -> the run folder itself
    checkpoint   RUN/checkpoints/step-N (or a folder inside it)                 -> RUN --checkpoint step-N
    checkpoints  RUN/checkpoints                                                -> RUN --checkpoint last
    run part     any other folder inside a run (RUN/tokenizer, RUN/report_plots) -> the run folder itself
    merged       a `phinetune merge` output (MERGED_MARKER)                    a model; where a run is expected: its run
    model        config.json with weights (a Hugging Face folder; RUN/model, RUN/base/x)  a model
    tokenizer    tokenizer files without weights                                enough for `data inspect --model`
    export       GGUF files or an ONNX Runtime GenAI folder                     -> the run or a merged folder
    runs         a folder whose sub-folders are runs (runs/)                    -> one of them
    empty, file, other (files, none of them a model's), missing

Nothing here imports torch: the CLI asks before it loads anything (runs/status.py says whether a run is usable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.runs.run_dir import ADAPTER_CONFIG, CHECKPOINT_PREFIX, CHECKPOINT_TMP_PREFIX, MERGED_MARKER, RunDir

RUN, ADAPTER, CHECKPOINT, CHECKPOINTS, RUN_PART = "run", "adapter", "checkpoint", "checkpoints", "run part"
MERGED, MODEL, TOKENIZER, EXPORT = "merged", "model", "tokenizer", "export"
RUNS, EMPTY, FILE, OTHER, MISSING = "runs", "empty", "file", "other", "missing"
MODEL_KINDS = (RUN, MERGED, MODEL)  # what a verb that loads a model can load
IN_A_RUN = (ADAPTER, CHECKPOINT, CHECKPOINTS, RUN_PART)  # parts of a run that are no model of their own
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
)  # either makes a folder a tokenizer's (AutoTokenizer loads it)
ANY_MODEL = (
    "pass a run folder from `phinetune train`, a merged folder (`phinetune merge RUN --out DIR`), "
    "a Hugging Face model folder (config.json and weights) or a Hub id"
)
ANY_RUN = "pass the output.dir of a `phinetune train` run (e.g. runs/default)"


@dataclass(frozen=True)
class Folder:
    path: Path
    kind: str
    run: Path | None = None  # the run folder it belongs to (adapter, checkpoint, run part; a merged folder's source)
    step: str | None = None  # a checkpoint's name, step-N
    inside: str = ""  # where it sits in its run (tokenizer, checkpoints/step-4/...)
    runs: tuple[str, ...] = field(default_factory=tuple)  # a folder of runs: their names
    seen: tuple[str, ...] = field(default_factory=tuple)  # a few of the names an unknown folder holds


def has_weights(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)


def looks_like_run(folder: Path) -> bool:
    """run.json, or the config a run starts with beside another file only a run holds (run.json deleted)."""
    run = RunDir(folder)
    if run.info_file.is_file():
        return True
    return run.config.is_file() and any(
        p.exists() for p in (run.adapter, run.full_model, run.checkpoints, run.tokenizer, run.metrics)
    )


def enclosing_run(folder: Path, depth: int = 4) -> Path | None:
    for parent in list(folder.parents)[:depth]:
        if looks_like_run(parent):
            return parent
    return None


def classify(path: str | Path) -> Folder:
    p = Path(path).expanduser()
    if not p.exists():
        return Folder(p, MISSING)
    if p.is_file():
        return Folder(p, FILE, enclosing_run(p))
    if looks_like_run(p):
        return Folder(p, RUN, p)
    if (p / MERGED_MARKER).is_file():
        return Folder(p, MERGED, _merged_from(p))
    run = enclosing_run(p)
    if run is not None:
        parts = p.relative_to(run).parts
        inside = "/".join(parts)
        if parts[0] == RunDir(run).adapter.name:
            return Folder(p, ADAPTER, run, inside=inside)
        if parts[0] == RunDir(run).checkpoints.name:
            if len(parts) == 1:
                return Folder(p, CHECKPOINTS, run, inside=inside)
            step = parts[1].removeprefix(".tmp-") if parts[1].startswith(CHECKPOINT_TMP_PREFIX) else parts[1]
            return Folder(p, CHECKPOINT, run, step=step if step.startswith(CHECKPOINT_PREFIX) else None, inside=inside)
        if not ((p / "config.json").is_file() and has_weights(p)):  # RUN/model and RUN/base/x are models
            return Folder(p, RUN_PART, run, inside=inside)
    if (p / "config.json").is_file() and has_weights(p):
        return Folder(p, MODEL, run)
    if (p / ADAPTER_CONFIG).is_file():
        return Folder(p, ADAPTER)
    if any((p / name).is_file() for name in TOKENIZER_FILES):
        return Folder(p, TOKENIZER)
    if next(p.glob("*.gguf"), None) is not None or (p / "genai_config.json").is_file():
        return Folder(p, EXPORT)
    names = sorted(c.name for c in p.iterdir())
    runs = tuple(n for n in names if (p / n).is_dir() and looks_like_run(p / n))
    if runs:
        return Folder(p, RUNS, runs=runs)
    if not names:
        return Folder(p, EMPTY)
    return Folder(p, OTHER, seen=tuple(names[:3]))


def _merged_from(folder: Path) -> Path | None:
    try:
        source = json.loads((folder / MERGED_MARKER).read_text()).get("merged_from")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(source) if source else None


def what(f: Folder) -> str:
    """What the folder is, as the start of a sentence."""
    if f.kind == ADAPTER:
        return (
            f"{f.path} is the adapter folder inside the run {f.run}"
            if f.run
            else f"{f.path} holds a PEFT adapter but is not inside a phinetune run folder"
        )
    if f.kind == CHECKPOINT:
        return f"{f.path} is {'checkpoint ' + f.step if f.step else 'part of a checkpoint'} of the run {f.run}"
    if f.kind in (CHECKPOINTS, RUN_PART):
        return f"{f.path} is the {f.inside} folder inside the run {f.run}"
    descriptions = {
        RUN: f"{f.path} is a run folder",
        MERGED: f"{f.path} is a merged model folder" + (f" (merged from {f.run})" if f.run else ""),
        MODEL: f"{f.path} is a model folder" + (f" inside the run {f.run}" if f.run else ""),
        TOKENIZER: f"{f.path} holds a tokenizer but no model weights (no config.json with *.safetensors)",
        EXPORT: f"{f.path} is an export for another runtime (GGUF or ONNX), which phinetune does not load",
        RUNS: f"{f.path} is a folder of runs ({', '.join(f.runs[:4])}{', ...' if len(f.runs) > 4 else ''})",
        EMPTY: f"{f.path} is an empty folder",
        FILE: f"{f.path} is a file, not a folder",
        OTHER: f"{f.path} holds no model files (no config.json with weights; it has {', '.join(f.seen)}{', ...' if len(f.seen) == 3 else ''})",
        MISSING: f"{f.path} does not exist",
    }
    return descriptions[f.kind]


def model_problem(f: Folder, checkpoint_flag: str | None = "--checkpoint", tokenizer_only: bool = False) -> str | None:
    """None when a verb that loads a model can load this folder (a run, merged or model folder); else one sentence.
    `tokenizer_only`: the verb reads only the tokenizer (`data inspect --model`), so a tokenizer folder will do.

    A run's own state (unfinished, damaged) is runs/status.py's to judge."""
    if f.kind not in MODEL_KINDS and not (tokenizer_only and f.kind == TOKENIZER):
        return f"{what(f)}; {_instead(f, checkpoint_flag, ANY_MODEL)}"
    if f.kind == MERGED and not has_weights(f.path):
        return (
            f"{f.path} is a merged model folder without its weights (no *.safetensors); "
            "merge the run again (phinetune merge RUN --out DIR --overwrite)"
        )
    return None


def run_problem(f: Folder, checkpoint_flag: str | None = "--checkpoint") -> str | None:
    """None for a run folder; else one sentence saying what the folder is and which run folder to pass.
    `checkpoint_flag`: how the calling command takes a checkpoint (--checkpoint, --checkpoints, --b), None if it takes none."""
    if f.kind == RUN:
        return None
    if f.kind == MERGED:
        source = f"pass the run it was merged from: {f.run}" if f.run else "pass the run folder it was merged from"
        return (
            f"{what(f)}, not a run folder; this command reads a run's records (config, metrics, checkpoints): {source}"
        )
    if f.kind == MODEL and f.run is None:
        return f"{what(f)}, not a run folder from `phinetune train`; {ANY_RUN}"
    return f"{what(f)}; {_instead(f, checkpoint_flag, ANY_RUN)}"


def _instead(f: Folder, checkpoint_flag: str | None, otherwise: str) -> str:
    if f.kind == CHECKPOINT and f.step and checkpoint_flag:
        return f"pass the run folder with the checkpoint: {f.run} {checkpoint_flag} {f.step}"
    if f.kind == CHECKPOINTS and checkpoint_flag:
        return f"pass the run folder with a checkpoint: {f.run} {checkpoint_flag} last (or step-N)"
    if f.run is not None and f.kind in (ADAPTER, CHECKPOINT, CHECKPOINTS, RUN_PART, MODEL, FILE):
        return f"pass the run folder itself: {f.run}"
    if f.kind == ADAPTER:
        return "pass the run folder it was trained in, or a merged folder (phinetune merge RUN --out DIR)"
    if f.kind == RUNS:
        return f"pass one of them, e.g. {f.path / f.runs[0]}"
    return otherwise


def require_model(
    path: str | Path, checkpoint_flag: str | None = "--checkpoint", tokenizer_only: bool = False
) -> Folder:
    """The folder at an existing `path` when a model can be loaded from it; else PhinetuneError (one sentence)."""
    f = classify(path)
    problem = model_problem(f, checkpoint_flag, tokenizer_only)
    if problem:
        raise PhinetuneError(problem)
    return f


def open_run(path: str | Path, checkpoint_flag: str | None = "--checkpoint") -> RunDir:
    """The run folder at `path`; any other folder (the run's adapter/ or a checkpoint of it, a merged folder, an
    empty one) is refused with one sentence saying what it is and what to pass.
    `checkpoint_flag`: how the calling command takes a checkpoint, for that advice."""
    require_run(path, checkpoint_flag)
    return RunDir(Path(path))


def require_run(path: str | Path, checkpoint_flag: str | None = "--checkpoint") -> Folder:
    """The run folder at `path`, holding the records every verb reads (run.json, config.yaml); else one sentence."""
    f = classify(path)
    if f.kind == MISSING:
        raise PhinetuneError(f"run folder {path} does not exist; {ANY_RUN}")
    problem = run_problem(f, checkpoint_flag)
    if problem:
        raise PhinetuneError(problem)
    run = RunDir(f.path)
    lost = [p for p in (run.info_file, run.config) if not p.is_file()]
    if lost:
        raise PhinetuneError(
            f"{f.path} is a damaged run folder: {lost[0]} is missing; train it again with output.overwrite=true"
        )
    return f
