"""Every export target in one table: its name (`export --to NAME`), what runs its output, the refusals checked
before any work, how it is written from the merged folder, and how its own runtime answers from what was written.

`phinetune export` takes its choices and its steps from TARGETS; docs/export.md has a section per target
(tests/test_export_targets.py fails on one missing); every target's `verify` is run against PyTorch's answers in
the same test. This module imports no runtime, converter or torch: each step imports what it needs when it runs,
so the CLI can list the targets at once.

Where to add a target: a module in export/ with its writer (as gguf.py, ollama.py, onnx.py), then a `Target` here;
the pip packages it needs go into the `export` extra (pyproject.toml) and its `needs`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phinetune.errors import PhinetuneError
from phinetune.extras import require
from phinetune.progress import console

if TYPE_CHECKING:  # the specs are only named here; `export --help` lists the targets without loading them
    from phinetune.models.specs import ModelSpec


@dataclass
class ExportPlan:
    """What the user asked `phinetune export` for."""

    to: str
    quants: tuple[str, ...] = ("f16",)  # gguf / ollama
    precisions: tuple[str, ...] = ("fp32",)  # onnx
    device: str = "cpu"  # onnx execution provider
    overwrite: bool = False
    checkpoint: str | None = None  # 'last', 'step-N', 'best': that training checkpoint instead of the final weights


@dataclass(frozen=True)
class Target:
    name: str  # `export --to NAME`
    runtime: str  # what runs the output
    output: str  # what the --out folder holds
    needs: tuple[str, ...]  # modules from the `export` extra that writing it needs
    check: Callable[[ExportPlan, ModelSpec], None]  # refusals before the merge: architecture, options
    write: Callable[[Path, Path, str, ModelSpec, ExportPlan], None]  # (merged folder, out folder, run name, spec, plan)
    # The runtime's greedy answer to prompt token ids, from each model in a written folder: {file or folder: new ids}
    verify: Callable[[Path, list[int], int], dict[str, list[int]]]
    next_step: Callable[[Path, str], str | None] = lambda out, stem: None  # a command to print after the export


def gguf_name(stem: str, quant: str) -> str:
    return f"{stem}-{quant}.gguf"


def ollama_name(stem: str) -> str:
    """Ollama model names are lower-case letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "phinetune"


# ---------------------------------------------------------------- GGUF (llama.cpp) and Ollama


def _check_gguf(plan: ExportPlan, spec: ModelSpec) -> None:
    from phinetune.export.gguf import QTYPES, supported_arch

    supported_arch(spec.model_type)
    bad = [q for q in plan.quants if q not in QTYPES]
    if bad:
        raise PhinetuneError(f"--quant '{bad[0]}' is not one of {', '.join(QTYPES)}")


def _check_ollama(plan: ExportPlan, spec: ModelSpec) -> None:
    from phinetune.export.ollama import go_template

    _check_gguf(plan, spec)
    go_template(spec)
    if len(plan.quants) != 1:
        raise PhinetuneError(f"an Ollama model is one GGUF file: give one --quant (got {','.join(plan.quants)})")


def _write_gguf(model_dir: Path, out: Path, stem: str, spec: ModelSpec, plan: ExportPlan) -> None:
    from phinetune.export.gguf import write_gguf

    for quant in plan.quants:
        with console.status(f"Writing {gguf_name(stem, quant)}"):
            write_gguf(model_dir, out / gguf_name(stem, quant), quant)


def _write_ollama(model_dir: Path, out: Path, stem: str, spec: ModelSpec, plan: ExportPlan) -> None:
    from phinetune.export.ollama import write_modelfile

    _write_gguf(model_dir, out, stem, spec, plan)
    context = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    write_modelfile(out, gguf_name(stem, plan.quants[0]), spec, context)


def _verify_ggufs(files: list[Path], ids: list[int], max_new_tokens: int) -> dict[str, list[int]]:
    from phinetune.export.gguf import greedy

    require("running a GGUF (llama.cpp)", "export", "llama_cpp")
    return {f.name: greedy(f, ids, max_new_tokens) for f in files}


def _verify_gguf(out: Path, ids: list[int], max_new_tokens: int) -> dict[str, list[int]]:
    return _verify_ggufs(sorted(out.glob("*.gguf")), ids, max_new_tokens)


def _verify_ollama(out: Path, ids: list[int], max_new_tokens: int) -> dict[str, list[int]]:
    """Ollama runs the GGUF its Modelfile names with llama.cpp (the Go template is checked against the Jinja one in
    tests/test_export_ollama.py: there is no ollama binary to run here)."""
    first = (out / "Modelfile").read_text().splitlines()[0]
    return _verify_ggufs([out / first.removeprefix("FROM ./")], ids, max_new_tokens)


# ---------------------------------------------------------------- ONNX Runtime GenAI


def _check_onnx(plan: ExportPlan, spec: ModelSpec) -> None:
    from phinetune.export.onnx import PRECISIONS, check_supported

    check_supported(spec.model_type, plan.device)
    bad = [p for p in plan.precisions if p not in PRECISIONS]
    if bad:
        raise PhinetuneError(f"--precision '{bad[0]}' is not one of {', '.join(PRECISIONS)}")


def _write_onnx(model_dir: Path, out: Path, stem: str, spec: ModelSpec, plan: ExportPlan) -> None:
    from phinetune.export.onnx import build_onnx, prepare_input

    stop_ids = json.loads((model_dir / "generation_config.json").read_text()).get("eos_token_id") or []
    stop_ids = stop_ids if isinstance(stop_ids, list) else [stop_ids]
    prepare_input(model_dir)
    for precision in plan.precisions:
        with console.status(f"Building ONNX ({plan.device}, {precision})"):
            build_onnx(
                model_dir,
                out / f"{plan.device}-{precision}",
                precision,
                plan.device,
                stop_ids,
                cache_dir=out.parent / "onnx-cache",
            )


def _verify_onnx(out: Path, ids: list[int], max_new_tokens: int) -> dict[str, list[int]]:
    import onnxruntime_genai as og

    from phinetune.export.onnx import greedy

    built = [d for d in sorted(out.iterdir()) if (d / "genai_config.json").exists()]
    return {d.name: greedy(og.Model(str(d)), ids, max_new_tokens) for d in built}


# ---------------------------------------------------------------- the table

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("gguf", "llama.cpp", "one GGUF file per --quant", ("gguf",), _check_gguf, _write_gguf, _verify_gguf),
        Target(
            "ollama",
            "Ollama",
            "one GGUF file and a Modelfile (chat template as Go, stop tokens, sampling)",
            ("gguf",),
            _check_ollama,
            _write_ollama,
            _verify_ollama,
            next_step=lambda out, stem: f"ollama create {ollama_name(stem)} -f {out / 'Modelfile'}",
        ),
        Target(
            "onnx",
            "ONNX Runtime GenAI",
            "one folder per --precision (DEVICE-PRECISION/: genai_config.json, model.onnx)",
            ("onnxruntime_genai", "onnx_ir"),
            _check_onnx,
            _write_onnx,
            _verify_onnx,
        ),
    )
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise PhinetuneError(f"--to must be one of {', '.join(TARGETS)} (got '{name}')")
    return TARGETS[name]


def describe() -> str:
    """The targets as `export --to` lists them: 'gguf (llama.cpp), ollama (Ollama) or onnx (ONNX Runtime GenAI)'."""
    named = [f"{t.name} ({t.runtime})" for t in TARGETS.values()]
    return ", ".join(named[:-1]) + " or " + named[-1] if len(named) > 1 else named[0]
