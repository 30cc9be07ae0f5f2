"""`phinetune export RUN --to gguf|ollama|onnx --out DIR`: merge, convert, and only then appear at DIR.

Everything is built in a hidden staging folder beside DIR and renamed into place at the very end, so an
interrupted or failed export leaves nothing that looks like a finished one. All refusals (unfinished run,
unsupported architecture, existing output, missing extra) happen before the merge starts.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phinetune.errors import PhinetuneError
from phinetune.extras import require
from phinetune.models.specs import ModelSpec, get_spec
from phinetune.progress import console
from phinetune.runs.run_dir import RunDir, write_merged_marker
from phinetune.runs.status import LOAD_OFFER, require_final_weights

TARGETS = ("gguf", "ollama", "onnx")


@dataclass
class ExportPlan:
    to: str
    quants: tuple[str, ...] = ("f16",)  # gguf / ollama
    precisions: tuple[str, ...] = ("fp32",)  # onnx
    device: str = "cpu"  # onnx execution provider
    overwrite: bool = False
    checkpoint: Optional[str] = None  # 'last', 'step-N', 'best': export that training checkpoint instead of the final weights


def export_run(run_path: str, out: str, plan: ExportPlan) -> Path:
    run, spec = check_run(run_path, plan.checkpoint)
    out_dir = Path(out)
    _check_target(plan, spec, out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model_dir = merged_folder(run, staging / "merged", plan.checkpoint)
        result = staging / "result"
        result.mkdir()
        stop_ids = json.loads((model_dir / "generation_config.json").read_text()).get("eos_token_id") or []
        stop_ids = stop_ids if isinstance(stop_ids, list) else [stop_ids]
        if plan.to in ("gguf", "ollama"):
            write_ggufs(model_dir, result, run.path.name, spec, plan)
        else:
            _onnx(model_dir, result, plan, stop_ids)
        if out_dir.exists():  # only reachable with overwrite=True
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        result.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(p.name for p in out_dir.iterdir())
    listed = f": {', '.join(str(out_dir / f) for f in files)}" if len(files) <= 4 else f" ({len(files)} files)"
    console.print(f"exported {run.path} as {plan.to} to {out_dir}{listed}")
    if plan.to == "ollama":
        console.print(f"next: ollama create {ollama_name(run.path.name)} -f {out_dir / 'Modelfile'}")
    return out_dir


def check_run(run_path: str, checkpoint: Optional[str] = None, use_checkpoint: Optional[str] = LOAD_OFFER) -> tuple[RunDir, ModelSpec]:
    """A finished, intact run, or any run when a checkpoint of it is asked for (as generate and merge take them).
    `use_checkpoint`: how the calling command takes the last checkpoint of an unfinished or damaged run (None: it cannot)."""
    run = RunDir.open(run_path, "--checkpoint" if use_checkpoint else None)
    if checkpoint is None:
        require_final_weights(run, use_checkpoint)
    cfg = run.read_config()
    return run, get_spec(cfg.model.name, cfg.model.spec)


def _check_target(plan: ExportPlan, spec: ModelSpec, out_dir: Path) -> None:
    if plan.to not in TARGETS:
        raise PhinetuneError(f"--to must be one of {', '.join(TARGETS)} (got '{plan.to}')")
    if out_dir.exists() and not plan.overwrite:
        raise PhinetuneError(f"export output {out_dir} already exists; choose another --out or pass --overwrite")
    if plan.to in ("gguf", "ollama"):
        require(f"export --to {plan.to}", "export", "gguf")
        from phinetune.export.gguf import QTYPES, supported_arch

        supported_arch(spec.model_type)
        bad = [q for q in plan.quants if q not in QTYPES]
        if bad:
            raise PhinetuneError(f"--quant '{bad[0]}' is not one of {', '.join(QTYPES)}")
        if plan.to == "ollama":
            from phinetune.export.ollama import go_template

            go_template(spec)
            if len(plan.quants) != 1:
                raise PhinetuneError(f"an Ollama model is one GGUF file: give one --quant (got {','.join(plan.quants)})")
    else:
        require(f"export --to {plan.to}", "export", "onnxruntime_genai", "onnx_ir")
        from phinetune.export.onnx import PRECISIONS, check_supported

        check_supported(spec.model_type, plan.device)
        bad = [p for p in plan.precisions if p not in PRECISIONS]
        if bad:
            raise PhinetuneError(f"--precision '{bad[0]}' is not one of {', '.join(PRECISIONS)}")


def merged_folder(run: RunDir, dest: Path, checkpoint: Optional[str] = None) -> Path:
    """A standalone transformers folder of the run: the adapter merged in fp32 (merge.py), or the full model."""
    if not run.is_full:
        from phinetune.export.merge import merge_run

        return merge_run(str(run.path), str(dest), dtype="fp32", checkpoint=checkpoint, announce=False)
    if checkpoint is not None:
        raise PhinetuneError(f"--checkpoint {checkpoint}: {run.path} is a full fine-tune; export takes its final model/ folder "
                             "(a checkpoint holds only training state there)")
    shutil.copytree(run.full_model, dest)
    for item in run.tokenizer.iterdir():
        shutil.copy2(item, dest / item.name)
    cfg = run.read_config()  # what merge_run records: the spec (end-of-turn token) for the converters
    write_merged_marker(dest, get_spec(cfg.model.name, cfg.model.spec).key, run)
    return dest


def ollama_name(stem: str) -> str:
    """Ollama model names are lower-case letters, digits, '-', '_' and '.'."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "phinetune"


def gguf_name(stem: str, quant: str) -> str:
    return f"{stem}-{quant}.gguf"


def write_ggufs(model_dir: Path, result: Path, stem: str, spec: ModelSpec, plan: ExportPlan) -> None:
    from phinetune.export.gguf import write_gguf

    for quant in plan.quants:
        with console.status(f"Writing {gguf_name(stem, quant)}"):
            write_gguf(model_dir, result / gguf_name(stem, quant), quant)
    if plan.to == "ollama":
        from phinetune.export.ollama import write_modelfile

        context = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
        write_modelfile(result, gguf_name(stem, plan.quants[0]), spec, context)


def _onnx(model_dir: Path, result: Path, plan: ExportPlan, stop_ids: list[int]) -> None:
    from phinetune.export.onnx import build_onnx, prepare_input

    prepare_input(model_dir)
    for precision in plan.precisions:
        with console.status(f"Building ONNX ({plan.device}, {precision})"):
            build_onnx(model_dir, result / f"{plan.device}-{precision}", precision, plan.device, stop_ids,
                       cache_dir=result.parent / "onnx-cache")
